package model

import (
	"errors"
	"fmt"
	"math"
)

// TrainConfig is everything that determines a training run besides the data.
type TrainConfig struct {
	Model          Config      `json:"model"`
	Stages         int         `json:"stages"` // in-process split; does not change results
	Layout         Layout      `json:"layout"`
	Microbatches   int         `json:"microbatches"`
	MicrobatchSize int         `json:"microbatch_size"` // sequences per microbatch
	Optim          OptimConfig `json:"optim"`
}

// StepResult reports one optimizer step.
type StepResult struct {
	Step     int     // 1-based step just completed
	Loss     float64 // mean of the microbatch losses, summed in ascending order
	GradNorm float64 // before clipping
	LR       float64
}

// Trainer is the single-process reference trainer. One step is:
//
//  1. ZeroGrad on every shard.
//  2. For mb = 0..m-1 in order: draw the microbatch's windows from the
//     sampler, run forward through the shards, loss, backward.
//  3. FinishGrad on every shard (÷ visit count, = m here).
//  4. Global gradient norm over all tensors in canonical order; clip.
//  5. Optimizer update with the scheduled learning rate.
//
// A pipelined run doing the same per-shard calls in the same per-shard
// order reproduces it bit for bit.
type Trainer struct {
	Cfg  TrainConfig
	Pipe *Pipeline
	Opts []*Optimizer // one per shard
	Step int          // optimizer steps done
	win  []int32
}

// NewTrainer builds a freshly initialised model and optimizers.
func NewTrainer(cfg TrainConfig) (*Trainer, error) {
	cfg.Model = cfg.Model.WithDefaults()
	cfg.Optim = cfg.Optim.WithDefaults()
	if cfg.Stages == 0 {
		cfg.Stages = 1
	}
	if cfg.Microbatches < 1 || cfg.MicrobatchSize < 1 {
		return nil, fmt.Errorf("model: microbatches and microbatch size must be positive (got %d, %d)", cfg.Microbatches, cfg.MicrobatchSize)
	}
	p, err := NewPipeline(cfg.Model, cfg.Stages, cfg.Layout)
	if err != nil {
		return nil, err
	}
	t := &Trainer{Cfg: cfg, Pipe: p}
	for _, s := range p.Shards {
		o, err := NewOptimizer(cfg.Optim, s.Params())
		if err != nil {
			return nil, err
		}
		t.Opts = append(t.Opts, o)
	}
	t.Cfg.Optim = t.Opts[0].Cfg
	return t, nil
}

// WindowLen is the number of tokens one microbatch needs from the sampler.
func (t *Trainer) WindowLen() int { return t.Cfg.MicrobatchSize * (t.Cfg.Model.Ctx + 1) }

// TrainStep does one optimizer step. sample must fill dst with
// MicrobatchSize windows of Ctx+1 tokens; it is called once per microbatch
// in ascending order.
func (t *Trainer) TrainStep(sample func(dst []int32) error) (StepResult, error) {
	cfg := t.Cfg
	if len(t.win) != t.WindowLen() {
		t.win = make([]int32, t.WindowLen())
	}
	for _, s := range t.Pipe.Shards {
		s.ZeroGrad()
	}
	var total float64
	for mb := 0; mb < cfg.Microbatches; mb++ {
		if err := sample(t.win); err != nil {
			return StepResult{}, err
		}
		l, err := t.Pipe.TrainMicrobatch(mb, t.win, cfg.MicrobatchSize, cfg.Model.Ctx, nil)
		if err != nil {
			return StepResult{}, err
		}
		total += l
	}
	for _, s := range t.Pipe.Shards {
		s.FinishGrad()
	}
	params := t.Pipe.Params()
	norm := GlobalGradNorm(params)
	if math.IsNaN(norm) || math.IsInf(norm, 0) {
		return StepResult{}, errors.New("model: gradient norm is not finite; lower the learning rate")
	}
	ScaleGrads(params, ClipFactor(norm, cfg.Optim.ClipNorm))
	t.Step++
	lr := cfg.Optim.LRAt(t.Step)
	for _, o := range t.Opts {
		o.Update(t.Step, lr)
	}
	return StepResult{Step: t.Step, Loss: total / float64(cfg.Microbatches), GradNorm: norm, LR: lr}, nil
}

// States returns every parameter with its optimizer moments, in canonical
// order.
func (t *Trainer) States() []ParamState {
	var all []ParamState
	for _, o := range t.Opts {
		all = append(all, o.States...)
	}
	sortStates(all)
	return all
}
