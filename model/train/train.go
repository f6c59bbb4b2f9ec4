// Package train runs the single-process reference training loop end to end:
// it loads the corpus, drives model.Trainer, evaluates on the validation
// split, writes checkpoints (with the data position, so a run resumes
// exactly) and the loss-curve plot. Command files only parse flags and call
// it.
package train

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"stagecoach/data"
	"stagecoach/model"
)

// Metadata keys this package adds to checkpoints.
const (
	MetaDataPosition = "data_position"
	MetaCorpus       = "corpus"
	MetaMaxBytes     = "corpus_max_bytes"
	MetaHistory      = "loss_history"
	MetaSteps        = "steps"
)

// Options configures a run.
type Options struct {
	Train       model.TrainConfig
	Steps       int    // total optimizer steps (a resumed run continues up to it)
	CorpusDir   string // default data.DefaultCorpusDir()
	MaxBytes    int64  // corpus cap, default data.DefaultMaxBytes
	EvalEvery   int    // validation every N steps (and at the end); default Steps/10
	EvalWindows int    // validation windows of ctx+1 bytes; default 128
	OutDir      string // checkpoint and plot directory
	Resume      string // checkpoint directory or file to continue from
	StopAt      int    // stop (and checkpoint) after this step, 0: at Steps
}

// Event reports one step to the caller (progress bar, JSON lines).
type Event struct {
	Step       int      `json:"step"`
	Loss       float64  `json:"loss"`
	ValLoss    *float64 `json:"val_loss,omitempty"`
	LR         float64  `json:"lr"`
	GradNorm   float64  `json:"grad_norm"`
	Tokens     int64    `json:"tokens"`
	TokensPerS float64  `json:"tokens_per_s"`
}

// Point is one entry of the loss history kept in checkpoints and plotted.
type Point struct {
	Step int     `json:"step"`
	Loss float64 `json:"loss"`
	Val  bool    `json:"val,omitempty"`
}

// Result summarises a finished run.
type Result struct {
	Params         int
	TrainBytes     int
	ValBytes       int
	UnigramEntropy float64 // nats per byte of the validation split
	FinalValLoss   float64
	Checkpoint     string
	Plot           string
	Elapsed        time.Duration
	TokensPerS     float64
}

// Setup is a prepared run: the trainer, the data and the sampler.
type Setup struct {
	Opts    Options
	Trainer *model.Trainer
	Corpus  *data.Corpus
	Sampler *data.Sampler
	ValWin  []int32
	History []Point
}

// Prepare loads the corpus and builds (or restores) the trainer.
func Prepare(o Options) (*Setup, error) {
	if o.Steps < 1 {
		return nil, fmt.Errorf("steps must be at least 1, got %d", o.Steps)
	}
	if o.EvalWindows == 0 {
		o.EvalWindows = 128
	}
	if o.EvalEvery == 0 {
		o.EvalEvery = max(1, o.Steps/10)
	}
	var tr *model.Trainer
	var meta map[string]string
	if o.Resume != "" {
		path := CheckpointPath(o.Resume)
		var err error
		if tr, meta, err = model.LoadTrainer(path); err != nil {
			return nil, err
		}
		if o.Steps != tr.Cfg.Optim.TotalSteps {
			// Extending (or shortening) a run reshapes the LR schedule, so
			// the result differs from an uninterrupted run of o.Steps.
			tr.Cfg.Optim.TotalSteps = o.Steps
			for _, op := range tr.Opts {
				op.Cfg.TotalSteps = o.Steps
			}
		}
		o.Train = tr.Cfg
		if o.CorpusDir == "" {
			o.CorpusDir = meta[MetaCorpus]
		}
		if o.MaxBytes == 0 {
			o.MaxBytes, _ = strconv.ParseInt(meta[MetaMaxBytes], 10, 64)
		}
	} else {
		o.Train.Optim.TotalSteps = o.Steps
	}
	if o.CorpusDir == "" {
		dir, err := data.DefaultCorpusDir()
		if err != nil {
			return nil, err
		}
		o.CorpusDir = dir
	}
	if o.MaxBytes <= 0 {
		o.MaxBytes = data.DefaultMaxBytes
	}
	c, err := data.Load(o.CorpusDir, data.Options{MaxBytes: o.MaxBytes})
	if err != nil {
		return nil, err
	}
	if tr == nil {
		if tr, err = model.NewTrainer(o.Train); err != nil {
			return nil, err
		}
		o.Train = tr.Cfg
	}
	ctx := o.Train.Model.Ctx
	s := &Setup{Opts: o, Trainer: tr, Corpus: c, Sampler: data.NewSampler(c.Train, o.Train.Model.Seed)}
	if meta != nil {
		if err := s.Sampler.SetState(meta[MetaDataPosition]); err != nil {
			return nil, err
		}
		if h := meta[MetaHistory]; h != "" {
			if err := json.Unmarshal([]byte(h), &s.History); err != nil {
				return nil, fmt.Errorf("bad loss history in checkpoint: %w", err)
			}
		}
	}
	if s.ValWin, err = data.EvalWindows(c.Val, o.EvalWindows, ctx+1); err != nil {
		return nil, err
	}
	return s, nil
}

// CheckpointPath accepts a checkpoint directory or file.
func CheckpointPath(p string) string {
	if st, err := os.Stat(p); err == nil && st.IsDir() {
		return filepath.Join(p, model.WholeModelFile)
	}
	return p
}

// ValLoss is the mean validation loss of p over windows, with stages in
// skip omitted. Windows are evaluated 8 at a time.
func ValLoss(p *model.Pipeline, windows []int32, ctx int, skip map[int]bool) (float64, error) {
	w := ctx + 1
	n := len(windows) / w
	var total float64
	for i := 0; i < n; i += 8 {
		b := min(8, n-i)
		l, err := p.EvalLoss(windows[i*w:(i+b)*w], b, ctx, skip)
		if err != nil {
			return 0, err
		}
		total += l * float64(b)
	}
	return total / float64(n), nil
}

// Run trains to o.Steps, calling onStep after every step, then writes the
// checkpoint and the plot into o.OutDir.
func (s *Setup) Run(onStep func(Event)) (*Result, error) {
	o, tr := s.Opts, s.Trainer
	if o.OutDir == "" {
		return nil, errors.New("no output directory")
	}
	if err := os.MkdirAll(o.OutDir, 0o755); err != nil {
		return nil, err
	}
	ctx := o.Train.Model.Ctx
	sample := func(dst []int32) error { return s.Sampler.Fill(dst, ctx+1) }
	tokensPerStep := int64(o.Train.Microbatches * o.Train.MicrobatchSize * ctx)
	start := time.Now()
	var tokens int64
	res := &Result{Params: tr.Pipe.NumParams(), TrainBytes: len(s.Corpus.Train), ValBytes: len(s.Corpus.Val),
		UnigramEntropy: data.UnigramEntropy(s.Corpus.Val), FinalValLoss: math.NaN()}
	var trainTime time.Duration
	stop := o.Steps
	if o.StopAt > 0 && o.StopAt < stop {
		stop = o.StopAt
	}
	for tr.Step < stop {
		t0 := time.Now()
		r, err := tr.TrainStep(sample)
		if err != nil {
			return nil, err
		}
		trainTime += time.Since(t0)
		tokens += tokensPerStep
		ev := Event{Step: r.Step, Loss: r.Loss, LR: r.LR, GradNorm: r.GradNorm, Tokens: tokens,
			TokensPerS: float64(tokens) / trainTime.Seconds()}
		s.History = append(s.History, Point{Step: r.Step, Loss: r.Loss})
		if r.Step%o.EvalEvery == 0 || r.Step == stop {
			v, err := ValLoss(tr.Pipe, s.ValWin, ctx, nil)
			if err != nil {
				return nil, err
			}
			ev.ValLoss = &v
			res.FinalValLoss = v
			s.History = append(s.History, Point{Step: r.Step, Loss: v, Val: true})
		}
		if onStep != nil {
			onStep(ev)
		}
	}
	res.Elapsed = time.Since(start)
	if trainTime > 0 {
		res.TokensPerS = float64(tokens) / trainTime.Seconds()
	}
	if err := s.Save(o.OutDir); err != nil {
		return nil, err
	}
	res.Checkpoint = o.OutDir
	res.Plot = filepath.Join(o.OutDir, "loss.png")
	if err := PlotLoss(res.Plot, s.History, res.UnigramEntropy); err != nil {
		return nil, err
	}
	return res, nil
}

// Save writes the checkpoint with data position, corpus and loss history.
func (s *Setup) Save(dir string) error {
	hist, _ := json.Marshal(s.History)
	return s.Trainer.Save(dir, map[string]string{
		MetaDataPosition: s.Sampler.State(),
		MetaCorpus:       s.Opts.CorpusDir,
		MetaMaxBytes:     strconv.FormatInt(s.Opts.MaxBytes, 10),
		MetaHistory:      string(hist),
		MetaSteps:        strconv.Itoa(s.Opts.Steps),
	})
}
