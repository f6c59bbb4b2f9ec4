// Package builtin is the default compute backend: the Go transformer of
// package model, computed in the worker's own process. Gradients,
// contributions and state are the model's own buffers, so driving a
// builtin Stage through the compute interface gives exactly the numbers
// model.Shard gives (model/README.md, exactness contract).
package builtin

import (
	"context"
	"encoding/json"
	"fmt"

	"stagecoach/compute"
	"stagecoach/model"
)

// Name is the backend's name in errors and logs.
const Name = "go"

// Backend builds stages of the Go transformer.
type Backend struct {
	// Limits bound the model a Load may build (zero fields: the
	// defaults of model.Limits).
	Limits model.Limits
}

// Name implements compute.Backend.
func (Backend) Name() string { return Name }

// Close implements compute.Backend.
func (Backend) Close() error { return nil }

// Load implements compute.Backend.
func (b Backend) Load(_ context.Context, spec compute.LoadSpec) (compute.Stage, error) {
	var cfg model.Config
	if err := json.Unmarshal(spec.Model, &cfg); err != nil {
		return nil, fmt.Errorf("builtin: model config: %v", err)
	}
	var oc model.OptimConfig
	if len(spec.Optim) > 0 {
		if err := json.Unmarshal(spec.Optim, &oc); err != nil {
			return nil, fmt.Errorf("builtin: optimizer config: %v", err)
		}
	}
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("builtin: %v", err)
	}
	if err := cfg.CheckLimits(b.Limits, 1); err != nil {
		return nil, fmt.Errorf("builtin: %v", err)
	}
	return NewStage(cfg, oc, spec.Shard)
}

// Stage is one shard of the Go model with its optimizer.
type Stage struct {
	shard *model.Shard
	opt   *model.Optimizer
	desc  compute.Description
	// offset is each parameter's place in the flat gradient.
	offset map[*model.Tensor]int
	// kept holds each microbatch's contribution while contributions are
	// kept apart (buffers reused across steps); got marks this step's.
	kept map[int][]float32
	got  map[int]bool
}

// NewStage builds the shard spec of the model cfg with optimizer oc.
func NewStage(cfg model.Config, oc model.OptimConfig, spec compute.ShardSpec) (*Stage, error) {
	sh, err := model.NewShard(cfg, model.ShardSpec(spec))
	if err != nil {
		return nil, err
	}
	opt, err := model.NewOptimizer(oc, sh.Params())
	if err != nil {
		return nil, err
	}
	s := &Stage{shard: sh, opt: opt, offset: map[*model.Tensor]int{}}
	s.desc = compute.Description{Backend: Name, Width: sh.Config().Dim}
	n := 0
	for _, p := range sh.Params() {
		s.offset[p] = n
		n += len(p.W)
		s.desc.Params = append(s.desc.Params, compute.ParamInfo{Name: p.Name, Index: p.Index, Shape: append([]int(nil), p.Shape...), Decay: p.Decay})
	}
	return s, nil
}

// Shard is the model shard the stage computes (for in-process callers
// that need the model itself, e.g. evaluation).
func (s *Stage) Shard() *model.Shard { return s.shard }

// Optimizer is the stage's optimizer.
func (s *Stage) Optimizer() *model.Optimizer { return s.opt }

// Describe implements compute.Stage.
func (s *Stage) Describe() compute.Description { return s.desc }

// ZeroGrad implements compute.Stage.
func (s *Stage) ZeroGrad() error {
	s.shard.ZeroGrad()
	clear(s.got)
	return nil
}

// Forward implements compute.Stage.
func (s *Stage) Forward(mb int, x *compute.Tensor) (*compute.Tensor, error) {
	return wrap(s.shard.Forward(mb, unwrap(x)))
}

// Loss implements compute.Stage.
func (s *Stage) Loss(mb int, hidden *compute.Tensor, targets []int32) (float64, *compute.Tensor, error) {
	loss, g, err := s.shard.Loss(mb, unwrap(hidden), targets)
	if err != nil {
		return 0, nil, err
	}
	return loss, (*compute.Tensor)(g), nil
}

// Backward implements compute.Stage.
func (s *Stage) Backward(mb int, grad *compute.Tensor) (*compute.Tensor, error) {
	return wrap(s.shard.Backward(mb, unwrap(grad)))
}

// Recycle implements compute.Recycler.
func (s *Stage) Recycle(t *compute.Tensor) {
	if t != nil {
		s.shard.Recycle(t.Data)
	}
}

// BackwardInput implements compute.Stage. The Go model has no split
// backward: this is the whole backward, and BackwardWeight does nothing.
func (s *Stage) BackwardInput(mb int, grad *compute.Tensor) (*compute.Tensor, error) {
	return s.Backward(mb, grad)
}

// BackwardWeight implements compute.Stage (see BackwardInput).
func (s *Stage) BackwardWeight(int) error { return nil }

// KeepContributions implements compute.Stage.
func (s *Stage) KeepContributions(on bool) error {
	if !on {
		s.shard.SetContributionSink(nil)
		s.kept, s.got = nil, nil
		return nil
	}
	s.kept, s.got = map[int][]float32{}, map[int]bool{}
	n := s.desc.GradElems()
	s.shard.SetContributionSink(func(mb int, ps []*model.Tensor, contrib [][]float32) {
		buf := s.kept[mb]
		if buf == nil {
			buf = make([]float32, n)
			s.kept[mb] = buf
		}
		if !s.got[mb] {
			// A microbatch's contribution comes in parts (the head's
			// from Loss, the rest from Backward): start from zero.
			clear(buf)
			s.got[mb] = true
		}
		for i, p := range ps {
			copy(buf[s.offset[p]:], contrib[i])
		}
	})
	return nil
}

// Contribution implements compute.Stage.
func (s *Stage) Contribution(mb int) ([]float32, error) {
	if !s.got[mb] {
		return nil, fmt.Errorf("builtin: no gradient contribution of microbatch %d kept", mb)
	}
	return s.kept[mb], nil
}

// Grads implements compute.Stage: a copy of the gradients, flat.
func (s *Stage) Grads() ([]float32, error) {
	out := make([]float32, 0, s.desc.GradElems())
	for _, p := range s.shard.Params() {
		out = append(out, p.G...)
	}
	return out, nil
}

// SetGrads implements compute.Stage.
func (s *Stage) SetGrads(g []float32) error {
	if len(g) != s.desc.GradElems() {
		return fmt.Errorf("builtin: %d gradient elements, the stage has %d", len(g), s.desc.GradElems())
	}
	for _, p := range s.shard.Params() {
		o := s.offset[p]
		copy(p.G, g[o:o+len(p.G)])
	}
	return nil
}

// ScaleGrads implements compute.Stage.
func (s *Stage) ScaleGrads(f float32) error {
	for _, p := range s.shard.Params() {
		for i := range p.G {
			p.G[i] *= f
		}
	}
	return nil
}

// SumSquares implements compute.Stage.
func (s *Stage) SumSquares() ([]float64, error) {
	out := make([]float64, len(s.shard.Params()))
	for i, p := range s.shard.Params() {
		out[i] = model.SumSquares(p)
	}
	return out, nil
}

// Step implements compute.Stage.
func (s *Stage) Step(step int, lr float64, clip float32) error {
	model.ScaleGrads(s.shard.Params(), clip)
	s.opt.Update(step, lr)
	return nil
}

// State implements compute.Stage: the live buffers.
func (s *Stage) State() ([]compute.ParamState, error) {
	out := make([]compute.ParamState, len(s.opt.States))
	for i, st := range s.opt.States {
		out[i] = compute.ParamState{ParamInfo: s.desc.Params[i], W: st.T.W, M: st.M, V: st.V}
	}
	return out, nil
}

// SetState implements compute.Stage.
func (s *Stage) SetState(states []compute.ParamState) error {
	if len(states) != len(s.opt.States) {
		return fmt.Errorf("builtin: state has %d tensors, the stage %d", len(states), len(s.opt.States))
	}
	for i, st := range states {
		own := s.opt.States[i]
		if st.Name != own.T.Name || len(st.W) != len(own.T.W) || len(st.M) != len(own.M) || len(st.V) != len(own.V) {
			return fmt.Errorf("builtin: state tensor %d is %q (%d/%d/%d elements), the stage's is %q (%d)",
				i, st.Name, len(st.W), len(st.M), len(st.V), own.T.Name, len(own.T.W))
		}
	}
	for i, st := range states {
		own := s.opt.States[i]
		copy(own.T.W, st.W)
		copy(own.M, st.M)
		copy(own.V, st.V)
	}
	return nil
}

// Close implements compute.Stage.
func (s *Stage) Close() error { return nil }

func unwrap(t *compute.Tensor) *model.Activations { return (*model.Activations)(t) }

func wrap(a *model.Activations, err error) (*compute.Tensor, error) {
	return (*compute.Tensor)(a), err
}
