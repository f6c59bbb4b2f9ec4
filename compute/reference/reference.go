// Package reference is the single-process reference run of any compute
// backend: it drives the stages of one model split, all in one process,
// through the same training step as model.Trainer (and as the pipelined
// runtime, stage by stage), so "pipelined equals single-process" can be
// checked for every backend, not only the built-in Go model. With the
// built-in backend it reproduces model.Trainer bit for bit.
package reference

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strconv"

	"stagecoach/compute"
	"stagecoach/model"
)

// Trainer runs training steps on stages loaded from one backend.
type Trainer struct {
	Cfg    model.TrainConfig
	stages []compute.Stage
	specs  []compute.ShardSpec
	head   int
	// Step is the number of optimizer steps done.
	Step int
	win  []int32
}

// New loads cfg.Stages (at least 1) contiguous stages of cfg.Model from b,
// split as model.Split splits them.
func New(ctx context.Context, b compute.Backend, cfg model.TrainConfig) (*Trainer, error) {
	cfg.Model = cfg.Model.WithDefaults()
	cfg.Optim = cfg.Optim.WithDefaults()
	if cfg.Stages == 0 {
		cfg.Stages = 1
	}
	if cfg.Microbatches < 1 || cfg.MicrobatchSize < 1 {
		return nil, fmt.Errorf("reference: microbatches and microbatch size must be positive (got %d, %d)", cfg.Microbatches, cfg.MicrobatchSize)
	}
	if err := cfg.Model.Validate(); err != nil {
		return nil, err
	}
	if err := cfg.Optim.Validate(); err != nil {
		return nil, err
	}
	specs, err := model.Split(cfg.Model.Layers, cfg.Stages, cfg.Layout)
	if err != nil {
		return nil, err
	}
	mj, err := json.Marshal(cfg.Model)
	if err != nil {
		return nil, err
	}
	oj, err := json.Marshal(cfg.Optim)
	if err != nil {
		return nil, err
	}
	t := &Trainer{Cfg: cfg, head: -1}
	for i, sp := range specs {
		spec := compute.ShardSpec(sp)
		st, err := b.Load(ctx, compute.LoadSpec{Model: mj, Optim: oj, Shard: spec})
		if err != nil {
			t.Close()
			return nil, fmt.Errorf("reference: load stage %d on backend %s: %w", i, b.Name(), err)
		}
		t.stages = append(t.stages, st)
		t.specs = append(t.specs, spec)
		if spec.Head {
			t.head = i
		}
	}
	if t.head < 0 {
		t.Close()
		return nil, errors.New("reference: no stage holds the head")
	}
	return t, nil
}

// Stages are the loaded stages, in layer order.
func (t *Trainer) Stages() []compute.Stage { return t.stages }

// NumParams is the parameter count over all stages.
func (t *Trainer) NumParams() int {
	n := 0
	for _, st := range t.stages {
		for _, p := range st.Describe().Params {
			n += p.Elems()
		}
	}
	return n
}

// WindowLen is the number of tokens one microbatch needs from the sampler.
func (t *Trainer) WindowLen() int { return t.Cfg.MicrobatchSize * (t.Cfg.Model.Ctx + 1) }

// TrainStep does one optimizer step, as model.Trainer.TrainStep does:
// sample fills one microbatch's windows and is called once per microbatch
// in ascending order.
func (t *Trainer) TrainStep(sample func(dst []int32) error) (model.StepResult, error) {
	cfg := t.Cfg
	if len(t.win) != t.WindowLen() {
		t.win = make([]int32, t.WindowLen())
	}
	for _, st := range t.stages {
		if err := st.ZeroGrad(); err != nil {
			return model.StepResult{}, err
		}
	}
	var total float64
	for mb := 0; mb < cfg.Microbatches; mb++ {
		if err := sample(t.win); err != nil {
			return model.StepResult{}, err
		}
		l, err := t.microbatch(mb, t.win, true)
		if err != nil {
			return model.StepResult{}, fmt.Errorf("microbatch %d: %w", mb, err)
		}
		total += l
	}
	// Every stage was visited by every microbatch: divide by m, with the
	// float32 reciprocal model.Shard.FinishGrad uses.
	if m := cfg.Microbatches; m > 1 {
		for _, st := range t.stages {
			if err := st.ScaleGrads(1 / float32(m)); err != nil {
				return model.StepResult{}, err
			}
		}
	}
	norm, err := t.gradNorm()
	if err != nil {
		return model.StepResult{}, err
	}
	if math.IsNaN(norm) || math.IsInf(norm, 0) {
		return model.StepResult{}, errors.New("reference: gradient norm is not finite; lower the learning rate")
	}
	f := model.ClipFactor(norm, cfg.Optim.ClipNorm)
	t.Step++
	lr := cfg.Optim.LRAt(t.Step)
	for _, st := range t.stages {
		if err := st.Step(t.Step, lr, f); err != nil {
			return model.StepResult{}, err
		}
	}
	return model.StepResult{Step: t.Step, Loss: total / float64(cfg.Microbatches), GradNorm: norm, LR: lr}, nil
}

// microbatch runs one microbatch forward through every stage, the loss on
// the head stage and, when train, backward in reverse order.
func (t *Trainer) microbatch(mb int, win []int32, train bool) (float64, error) {
	ctx := t.Cfg.Model.Ctx
	b := len(win) / (ctx + 1)
	x, targets := SplitWindows(win, b, ctx)
	for i, st := range t.stages {
		y, err := st.Forward(mb, x)
		if err != nil {
			return 0, fmt.Errorf("stage %d forward: %w", i, err)
		}
		x = y
	}
	loss, g, err := t.stages[t.head].Loss(mb, x, targets)
	if err != nil {
		return 0, fmt.Errorf("stage %d loss: %w", t.head, err)
	}
	if !train {
		return loss, nil
	}
	for i := len(t.stages) - 1; i >= 0; i-- {
		if g, err = t.stages[i].Backward(mb, g); err != nil {
			return 0, fmt.Errorf("stage %d backward: %w", i, err)
		}
	}
	return loss, nil
}

// gradNorm is the global gradient norm: per-tensor sums of squares added
// in ascending canonical index order, as model.GlobalGradNorm and the
// coordinator add them.
func (t *Trainer) gradNorm() (float64, error) {
	type sq struct {
		index int
		v     float64
	}
	var all []sq
	for _, st := range t.stages {
		ss, err := st.SumSquares()
		if err != nil {
			return 0, err
		}
		ps := st.Describe().Params
		if len(ss) != len(ps) {
			return 0, fmt.Errorf("reference: %d sums of squares for %d parameters", len(ss), len(ps))
		}
		for i, p := range ps {
			all = append(all, sq{p.Index, ss[i]})
		}
	}
	sort.Slice(all, func(i, j int) bool { return all[i].index < all[j].index })
	var s float64
	for _, x := range all {
		s += x.v
	}
	return math.Sqrt(s), nil
}

// Steps is the optimizer steps done (train.Engine).
func (t *Trainer) Steps() int { return t.Step }

// ValLoss is the mean token loss over windows of ctx+1 tokens, evaluated
// eight windows at a time as train.ValLoss does (train.Engine).
func (t *Trainer) ValLoss(windows []int32, ctx int) (float64, error) {
	w := ctx + 1
	n := len(windows) / w
	if n == 0 || ctx != t.Cfg.Model.Ctx {
		return 0, fmt.Errorf("reference: %d tokens of context %d: no window to evaluate", len(windows), ctx)
	}
	var total float64
	for i := 0; i < n; i += 8 {
		b := min(8, n-i)
		l, err := t.microbatch(i, windows[i*w:(i+b)*w], false)
		if err != nil {
			return 0, err
		}
		for _, st := range t.stages {
			if err := st.ZeroGrad(); err != nil {
				return 0, err
			}
		}
		total += l * float64(b)
	}
	return total / float64(n), nil
}

// Save writes the whole model with its optimizer moments as
// model.safetensors (train's format, global tensor names) and
// SHA256SUMS into dir (train.Engine).
func (t *Trainer) Save(dir string, extra map[string]string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	states, err := t.States()
	if err != nil {
		return err
	}
	ps := make([]model.ParamState, len(states))
	for i, s := range states {
		ps[i] = model.ParamState{T: &model.Tensor{Name: s.Name, Index: s.Index, Shape: s.Shape, W: s.W, Decay: s.Decay}, M: s.M, V: s.V}
	}
	mc, _ := json.Marshal(t.Cfg.Model)
	tc, _ := json.Marshal(t.Cfg)
	meta := map[string]string{model.MetaFormat: model.FormatV1, model.MetaModelConfig: string(mc),
		model.MetaTrainConfig: string(tc), model.MetaStep: strconv.Itoa(t.Step)}
	for k, v := range extra {
		meta[k] = v
	}
	if err := model.SaveStates(filepath.Join(dir, model.WholeModelFile), ps, meta); err != nil {
		return err
	}
	return model.WriteSums(dir, []string{model.WholeModelFile})
}

// States returns every parameter with its optimizer moments, sorted by
// canonical index (copies, safe to keep).
func (t *Trainer) States() ([]compute.ParamState, error) {
	var all []compute.ParamState
	for _, st := range t.stages {
		ss, err := st.State()
		if err != nil {
			return nil, err
		}
		for _, s := range ss {
			s.W = append([]float32(nil), s.W...)
			s.M = append([]float32(nil), s.M...)
			s.V = append([]float32(nil), s.V...)
			all = append(all, s)
		}
	}
	sort.Slice(all, func(i, j int) bool { return all[i].Index < all[j].Index })
	return all, nil
}

// Close releases the stages.
func (t *Trainer) Close() {
	for _, st := range t.stages {
		_ = st.Close()
	}
	t.stages = nil
}

// SplitWindows turns b windows of ctx+1 tokens into the embedding input
// (token ids as float32, [b, ctx]) and the targets, the same cut the
// model's trainer and the worker make.
func SplitWindows(win []int32, b, ctx int) (*compute.Tensor, []int32) {
	in := make([]float32, b*ctx)
	tg := make([]int32, b*ctx)
	for i := 0; i < b; i++ {
		for j := 0; j < ctx; j++ {
			in[i*ctx+j] = float32(win[i*(ctx+1)+j])
		}
		copy(tg[i*ctx:], win[i*(ctx+1)+1:(i+1)*(ctx+1)])
	}
	return &compute.Tensor{Shape: []int{b, ctx}, Data: in}, tg
}
