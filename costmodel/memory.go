package costmodel

import (
	"fmt"
	"math"

	"stagecoach/model"
	"stagecoach/scheduler"
)

// ModelMemory describes the model whose memory the simulator counts in
// bytes: its shape (layers come from the plan) and its optimizer. Zero
// fields take the defaults of `stagecoach train` (DefaultModelMemory).
type ModelMemory struct {
	Vocab  int `yaml:"vocab,omitempty" json:"vocab"`
	Dim    int `yaml:"dim,omitempty" json:"dim"`
	Heads  int `yaml:"heads,omitempty" json:"heads"`
	Ctx    int `yaml:"ctx,omitempty" json:"ctx"`
	Hidden int `yaml:"hidden,omitempty" json:"hidden"`
	// Optimizer decides the optimizer state per parameter: adamw and
	// lamb keep two moments, sgd none.
	Optimizer string `yaml:"optimizer,omitempty" json:"optimizer"`
	// StageActivationBytesPerSample, when set (one entry per plan stage,
	// from a measurement), replaces the shape's estimate of what a
	// sample's forward keeps on each stage.
	StageActivationBytesPerSample []float64 `yaml:"stage_activation_bytes_per_sample,omitempty" json:"stage_activation_bytes_per_sample,omitempty"`
	// SplitBackward says the backend splits a backward into the input
	// gradient (I) and a deferred weight gradient (W), keeping
	// model.BlockWeightGradFloats per token between them. The built-in Go
	// model does not: it computes I as the whole backward and frees the
	// microbatch's activations then.
	SplitBackward bool `yaml:"split_backward,omitempty" json:"split_backward,omitempty"`
}

// DefaultModelMemory is the model `stagecoach train` and `up` build by
// default: vocab 256, dim 128, 4 heads, context 64, MLP 4 x dim, AdamW.
func DefaultModelMemory() ModelMemory {
	return ModelMemory{Vocab: 256, Dim: 128, Heads: 4, Ctx: 64, Hidden: 512, Optimizer: "adamw"}
}

// WithDefaults fills zero fields from DefaultModelMemory (Hidden from the
// dim: 4 x Dim).
func (m ModelMemory) WithDefaults() ModelMemory {
	d := DefaultModelMemory()
	if m.Vocab == 0 {
		m.Vocab = d.Vocab
	}
	if m.Dim == 0 {
		m.Dim = d.Dim
	}
	if m.Heads == 0 {
		m.Heads = d.Heads
	}
	if m.Ctx == 0 {
		m.Ctx = d.Ctx
	}
	if m.Hidden == 0 {
		m.Hidden = 4 * m.Dim
	}
	if m.Optimizer == "" {
		m.Optimizer = d.Optimizer
	}
	return m
}

// OptimizerStates is the number of float32 states an optimizer keeps per
// parameter: AdamW and LAMB two moments, plain SGD none.
func OptimizerStates(name string) (int, error) {
	switch name {
	case "adamw", "lamb":
		return 2, nil
	case "sgd":
		return 0, nil
	}
	return 0, fmt.Errorf("unknown optimizer %q (want adamw, lamb or sgd)", name)
}

// check validates m (defaults applied); where names it in errors.
func (m ModelMemory) check(where string) error {
	for _, f := range []struct {
		name   string
		v, max int
	}{{"vocab", m.Vocab, model.MaxVocab}, {"dim", m.Dim, model.MaxDim}, {"heads", m.Heads, model.MaxDim},
		{"ctx", m.Ctx, model.MaxCtx}, {"hidden", m.Hidden, model.MaxHidden}} {
		if f.v < 1 || f.v > f.max {
			return fmt.Errorf("%s.%s is %d, want 1..%d", where, f.name, f.v, f.max)
		}
	}
	if m.Heads > m.Dim {
		return fmt.Errorf("%s.heads is %d, more than dim %d", where, m.Heads, m.Dim)
	}
	if _, err := OptimizerStates(m.Optimizer); err != nil {
		return fmt.Errorf("%s.optimizer: %v", where, err)
	}
	for i, v := range m.StageActivationBytesPerSample {
		if !(v >= 0) || math.IsInf(v, 0) {
			return fmt.Errorf("%s.stage_activation_bytes_per_sample[%d] is %v, want a finite number >= 0", where, i, v)
		}
	}
	return nil
}

func (m ModelMemory) config(layers int) model.Config {
	return model.Config{Vocab: m.Vocab, Layers: layers, Dim: m.Dim, Heads: m.Heads, Ctx: m.Ctx, Hidden: m.Hidden}
}

// ModelMemory returns the cluster's model for memory accounting, defaults
// applied.
func (c *Cluster) ModelMemory() ModelMemory {
	if c.Model == nil {
		return DefaultModelMemory()
	}
	return c.Model.WithDefaults()
}

// StageMemories prices every stage of p in bytes under c's model, in
// float32, as the Go model holds it: a stage's static part is its
// parameters, their gradients and contribution buffers
// (model.ParamCopies) and the optimizer's states (the embeddings
// on stage 0, the final norm and head on the head stage, or the calibrated
// compute.stage_gradient_bytes when it has one entry per stage), and its
// workspace model.ShardWorkspaceFloats for the plan's largest microbatch
// (attention's scratch counted for one goroutine); a sample's forward keeps
// model.ShardActivationFloats per token (or the measured
// model.stage_activation_bytes_per_sample), a recomputing plan only the
// stage input (token ids on stage 0, dim floats per token elsewhere), a
// backend that splits its backward (model.split_backward)
// model.BlockWeightGradFloats between I and W; the loss
// holds the logits and their gradient while it runs.
func StageMemories(p *scheduler.Plan, c *Cluster) ([]scheduler.StageMemory, error) {
	m := c.ModelMemory()
	if err := m.check("model"); err != nil {
		return nil, fmt.Errorf("cluster %q: %v", c.Name, err)
	}
	ns := len(p.Stages)
	if n := len(m.StageActivationBytesPerSample); n > 0 && n != ns {
		return nil, fmt.Errorf("cluster %q: model.stage_activation_bytes_per_sample has %d entries, the plan has %d stages", c.Name, n, ns)
	}
	states, _ := OptimizerStates(m.Optimizer)
	cfg := m.config(p.Layers())
	tokens := float64(m.Ctx)
	// The workspace is sized by the largest microbatch.
	mbTokens := 0.0
	for _, mb := range p.Microbatches {
		mbTokens = max(mbTokens, float64(mb.Samples)*tokens)
	}
	out := make([]scheduler.StageMemory, ns)
	for s, st := range p.Stages {
		layers := float64(st.Layers)
		params := layers * float64(model.BlockParams(cfg))
		if s == 0 {
			params += float64(model.EmbedParams(cfg))
		}
		if s == p.HeadStage {
			params += float64(model.HeadParams(cfg))
		}
		if g := c.Compute.StageGradientBytes; len(g) == ns {
			params = g[s] / 4
		}
		sm := scheduler.StageMemory{
			Static:      4 * params * float64(model.ParamCopies+states),
			Activations: 4 * tokens * model.ShardActivationFloats(cfg, st.Layers, s == 0),
			Workspace:   4 * model.ShardWorkspaceFloats(cfg, mbTokens, s == p.HeadStage, 1),
			Input:       4 * tokens * float64(m.Dim),
			WeightGrad:  4 * tokens * layers * model.BlockWeightGradFloats(cfg),
		}
		if s == 0 {
			sm.Input = 4 * tokens // int32 token ids
		}
		if a := m.StageActivationBytesPerSample; len(a) == ns {
			sm.Activations = a[s]
		}
		if !m.SplitBackward {
			sm.WeightGrad = 0
		}
		sm.WeightGrad = min(sm.WeightGrad, sm.Activations)
		sm.Input = min(sm.Input, sm.Activations)
		if s == p.HeadStage {
			sm.Loss = 4 * tokens * model.HeadActivationFloats(cfg)
		}
		out[s] = sm
	}
	return out, nil
}

// CapacityBytes is node n's device memory in bytes: its memory_gib, or
// the cluster's default_memory_gib (0: unbounded).
func (c *Cluster) CapacityBytes(n *Node) float64 {
	g := n.MemoryGiB
	if g == 0 {
		g = c.DefaultMemoryGiB
	}
	return g * (1 << 30)
}
