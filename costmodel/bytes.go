package costmodel

import (
	"fmt"

	"go.yaml.in/yaml/v3"

	"stagecoach/model"
	"stagecoach/scheduler"
)

// ActivationBytes is the payload of one sample's activations (or their
// gradients) between two stages of m: ctx x dim float32s.
func ActivationBytes(m model.Config) float64 {
	m = m.WithDefaults()
	return float64(m.Ctx) * float64(m.Dim) * 4
}

// GradientBytesPerLayer is m's float32 gradient bytes over its layers
// (embeddings and head spread over them): what a ring all-reduce moves
// per layer when the stages' own sizes are not known.
func GradientBytesPerLayer(m model.Config) float64 {
	m = m.WithDefaults()
	p, err := model.NewPipeline(m, 1, model.HeadFirst)
	if err != nil || m.Layers == 0 {
		return 0
	}
	return float64(p.NumParams()) * 4 / float64(m.Layers)
}

// StageGradientBytes is the float32 gradient size of every stage of p for
// model m: what each stage's all-reduce moves. The embeddings and the
// head make their stages heavier than a layer-proportional share.
func StageGradientBytes(p *scheduler.Plan, m model.Config) ([]float64, error) {
	layout := model.HeadLast
	if p.HeadStage == 0 && len(p.Stages) > 1 {
		layout = model.HeadFirst
	}
	return GradientBytesOfStages(m, len(p.Stages), layout)
}

// GradientBytesOfStages is StageGradientBytes for m split evenly over
// stages with the head where layout puts it.
func GradientBytesOfStages(m model.Config, stages int, layout model.Layout) ([]float64, error) {
	m = m.WithDefaults()
	specs, err := model.Split(m.Layers, stages, layout)
	if err != nil {
		return nil, fmt.Errorf("gradient sizes: %w", err)
	}
	out := make([]float64, len(specs))
	for s, sp := range specs {
		sh, err := model.NewShard(m, sp)
		if err != nil {
			return nil, fmt.Errorf("gradient sizes of stage %d: %w", s, err)
		}
		for _, t := range sh.Params() {
			out[s] += 4 * float64(len(t.W))
		}
	}
	return out, nil
}

// ForPlan is cost model k with p's per-stage gradient sizes for model m,
// so that a cost model calibrated on one plan prices another's
// all-reduces right.
func ForPlan(k *Cluster, p *scheduler.Plan, m model.Config) (*Cluster, error) {
	c, err := k.Clone()
	if err != nil {
		return nil, err
	}
	if c.Compute.StageGradientBytes, err = StageGradientBytes(p, m); err != nil {
		return nil, err
	}
	return c, c.Validate()
}

// Clone deep-copies c through its YAML form, validated.
func (c *Cluster) Clone() (*Cluster, error) {
	b, err := yaml.Marshal(c)
	if err != nil {
		return nil, fmt.Errorf("encode cluster %q: %w", c.Name, err)
	}
	out, err := ParseCluster(b)
	if err != nil {
		return nil, fmt.Errorf("cluster %q does not parse back: %w", c.Name, err)
	}
	return out, nil
}
