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
	// NewEngine, when set, builds the engine from the train config
	// instead of the built-in model's trainer (a compute backend's).
	NewEngine func(model.TrainConfig) (Engine, error)
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
	Opts Options
	// Engine runs the steps: Trainer's, or a compute backend's.
	Engine Engine
	// Trainer is the built-in model's trainer (nil when a backend
	// computes).
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
	var engine Engine
	switch {
	case o.NewEngine != nil:
		if o.Resume != "" {
			return nil, errors.New("resuming is for the built-in model; a backend's run starts from the seed")
		}
		o.Train.Model = o.Train.Model.WithDefaults()
		o.Train.Optim = o.Train.Optim.WithDefaults()
		if engine, err = o.NewEngine(o.Train); err != nil {
			return nil, err
		}
	case tr == nil:
		if tr, err = model.NewTrainer(o.Train); err != nil {
			return nil, err
		}
		o.Train = tr.Cfg
		engine = modelEngine{tr}
	default:
		engine = modelEngine{tr}
	}
	ctx := o.Train.Model.Ctx
	s := &Setup{Opts: o, Trainer: tr, Engine: engine, Corpus: c, Sampler: data.NewSampler(c.Train, o.Train.Model.Seed)}
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
	o, tr := s.Opts, s.Engine
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
	res := &Result{Params: tr.NumParams(), TrainBytes: len(s.Corpus.Train), ValBytes: len(s.Corpus.Val),
		UnigramEntropy: data.UnigramEntropy(s.Corpus.Val), FinalValLoss: math.NaN()}
	var trainTime time.Duration
	stop := o.Steps
	if o.StopAt > 0 && o.StopAt < stop {
		stop = o.StopAt
	}
	for tr.Steps() < stop {
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
			v, err := tr.ValLoss(s.ValWin, ctx)
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
	return s.Engine.Save(dir, map[string]string{
		MetaDataPosition: s.Sampler.State(),
		MetaCorpus:       s.Opts.CorpusDir,
		MetaMaxBytes:     strconv.FormatInt(s.Opts.MaxBytes, 10),
		MetaHistory:      string(hist),
		MetaSteps:        strconv.Itoa(s.Opts.Steps),
	})
}

// Engine is what Run drives: one optimizer step at a time, validation,
// and the checkpoint.
type Engine interface {
	TrainStep(sample func(dst []int32) error) (model.StepResult, error)
	// Steps is the optimizer steps done.
	Steps() int
	NumParams() int
	// ValLoss is the mean loss over windows of ctx+1 tokens.
	ValLoss(windows []int32, ctx int) (float64, error)
	// Save writes the checkpoint (model.safetensors and SHA256SUMS at
	// least) with extra metadata.
	Save(dir string, extra map[string]string) error
}

// modelEngine is the built-in model's trainer as an Engine.
type modelEngine struct{ t *model.Trainer }

func (m modelEngine) TrainStep(sample func([]int32) error) (model.StepResult, error) {
	return m.t.TrainStep(sample)
}
func (m modelEngine) Steps() int     { return m.t.Step }
func (m modelEngine) NumParams() int { return m.t.Pipe.NumParams() }
func (m modelEngine) ValLoss(windows []int32, ctx int) (float64, error) {
	return ValLoss(m.t.Pipe, windows, ctx, nil)
}
func (m modelEngine) Save(dir string, extra map[string]string) error { return m.t.Save(dir, extra) }
