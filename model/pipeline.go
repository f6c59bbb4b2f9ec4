package model

import (
	"fmt"
	"math"
	"sort"
)

// Pipeline is a model cut into shards and driven in one process. It is the
// reference every distributed run is compared with: the runtime does the
// same calls on different machines.
type Pipeline struct {
	Cfg    Config
	Layout Layout
	Shards []*Shard
}

// NewPipeline builds a freshly initialised model split into stages shards.
// Initial weights do not depend on stages or layout.
func NewPipeline(cfg Config, stages int, layout Layout) (*Pipeline, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	specs, err := Split(cfg.Layers, stages, layout)
	if err != nil {
		return nil, err
	}
	p := &Pipeline{Cfg: cfg, Layout: layout}
	for _, sp := range specs {
		s, err := NewShard(cfg, sp)
		if err != nil {
			return nil, err
		}
		p.Shards = append(p.Shards, s)
	}
	return p, nil
}

// Params returns every parameter in canonical order.
func (p *Pipeline) Params() []*Tensor {
	var all []*Tensor
	for _, s := range p.Shards {
		all = append(all, s.Params()...)
	}
	sort.Slice(all, func(i, j int) bool { return all[i].Index < all[j].Index })
	return all
}

// NumParams is the total parameter count.
func (p *Pipeline) NumParams() int {
	n := 0
	for _, t := range p.Params() {
		n += len(t.W)
	}
	return n
}

func (p *Pipeline) headShard() *Shard {
	if p.Layout == HeadFirst {
		return p.Shards[0]
	}
	return p.Shards[len(p.Shards)-1]
}

// splitWindows turns b windows of t+1 tokens into inputs and targets.
func splitWindows(win []int32, b, t int) (*Activations, []int32, error) {
	if len(win) != b*(t+1) {
		return nil, nil, fmt.Errorf("model: %d tokens is not %d windows of %d", len(win), b, t+1)
	}
	in := make([]int32, b*t)
	tg := make([]int32, b*t)
	for i := 0; i < b; i++ {
		copy(in[i*t:], win[i*(t+1):i*(t+1)+t])
		copy(tg[i*t:], win[i*(t+1)+1:(i+1)*(t+1)])
	}
	return TokenActivations(in, b, t), tg, nil
}

func (p *Pipeline) checkSkip(skip map[int]bool) error {
	for s, on := range skip {
		if !on {
			continue
		}
		if s < 0 || s >= len(p.Shards) {
			return fmt.Errorf("model: skipped stage %d outside 0..%d", s, len(p.Shards)-1)
		}
		if s == 0 {
			return fmt.Errorf("model: stage 0 holds the embedding and cannot be skipped")
		}
		if p.Shards[s].spec.Head {
			return fmt.Errorf("model: stage %d holds the output head and cannot be skipped", s)
		}
	}
	return nil
}

// TrainMicrobatch runs forward, loss and backward for microbatch mb: b
// windows of t+1 tokens, visiting every shard not in skip. It returns the
// microbatch's mean token loss. Call it in ascending mb order.
func (p *Pipeline) TrainMicrobatch(mb int, windows []int32, b, t int, skip map[int]bool) (float64, error) {
	if err := p.checkSkip(skip); err != nil {
		return 0, err
	}
	x, targets, err := splitWindows(windows, b, t)
	if err != nil {
		return 0, err
	}
	var visited []*Shard
	for i, s := range p.Shards {
		if skip[i] {
			continue
		}
		if x, err = s.Forward(mb, x); err != nil {
			return 0, err
		}
		visited = append(visited, s)
	}
	loss, g, err := p.headShard().Loss(mb, x, targets)
	if err != nil {
		return 0, err
	}
	for i := len(visited) - 1; i >= 0; i-- {
		if g, err = visited[i].Backward(mb, g); err != nil {
			return 0, err
		}
	}
	return loss, nil
}

// EvalLoss is the mean token loss over b windows of t+1 tokens, with the
// stages in skip omitted (identity), without touching gradients.
func (p *Pipeline) EvalLoss(windows []int32, b, t int, skip map[int]bool) (float64, error) {
	if err := p.checkSkip(skip); err != nil {
		return 0, err
	}
	x, targets, err := splitWindows(windows, b, t)
	if err != nil {
		return 0, err
	}
	for i, s := range p.Shards {
		if skip[i] {
			continue
		}
		if x, err = s.ForwardEval(x); err != nil {
			return 0, err
		}
	}
	return p.headShard().EvalLoss(x, targets)
}

// SumSquares is Σg² of a tensor's gradient, accumulated in float64 in
// element order.
func SumSquares(t *Tensor) float64 {
	var s float64
	for _, g := range t.G {
		s += float64(g) * float64(g)
	}
	return s
}

// GlobalGradNorm is the gradient norm over params, summing the per-tensor
// SumSquares in ascending canonical Index order. A distributed runtime
// gathers SumSquares per tensor from every shard and sums them the same way.
func GlobalGradNorm(params []*Tensor) float64 {
	ps := append([]*Tensor(nil), params...)
	sort.Slice(ps, func(i, j int) bool { return ps[i].Index < ps[j].Index })
	var s float64
	for _, t := range ps {
		s += SumSquares(t)
	}
	return math.Sqrt(s)
}

// ClipFactor is the factor that brings a gradient of the given norm down to
// maxNorm (1 when no clipping is needed or maxNorm ≤ 0).
func ClipFactor(norm, maxNorm float64) float32 {
	if maxNorm <= 0 || norm <= maxNorm || math.IsNaN(norm) {
		return 1
	}
	return float32(maxNorm / norm)
}

// ScaleGrads multiplies every gradient by f (no-op for f == 1).
func ScaleGrads(params []*Tensor, f float32) {
	if f == 1 {
		return
	}
	for _, t := range params {
		for i := range t.G {
			t.G[i] *= f
		}
	}
}
