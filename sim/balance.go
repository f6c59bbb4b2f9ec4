package sim

import (
	"fmt"

	"stagecoach/scheduler"
)

// Balanced is the outcome of Balance.
type Balanced struct {
	// Plan is the faster of the balanced plan and the original.
	Plan *scheduler.Plan
	// Before and After are the simulated iteration times of the
	// original and of the balanced plan.
	Before, After float64
	// Kept says the balanced plan was faster and is the one returned.
	Kept bool
	// Cluster priced both plans: the cluster given, or a copy priced by
	// the layer (Cluster.PerLayer) when it priced whole stages. Simulate
	// Plan with it.
	Cluster *Cluster
}

// Balance re-places p's layers over its stages with
// scheduler.BalanceLayers at this cluster's costs and node speeds, then
// simulates both plans and returns the faster (the original on a tie):
// the bottleneck stage is what the split optimises, the simulation says
// whether the whole iteration (fill, drain, communication) gained.
// A calibrated per-stage forward time (compute.stage_forward_s) belongs
// to the original split: both plans are then priced by the layer, the
// stages' measured times turned into node speeds (Cluster.PerLayer).
func Balance(p *scheduler.Plan, c *Cluster, opt Options) (*Balanced, error) {
	c, err := c.PerLayer(p)
	if err != nil {
		return nil, fmt.Errorf("balance: %w", err)
	}
	speeds, err := c.StageSpeeds(p)
	if err != nil {
		return nil, fmt.Errorf("balance: %w", err)
	}
	layers := 0
	for _, s := range p.Stages {
		layers += s.Layers
	}
	split, err := scheduler.BalanceLayers(layers, p.HeadStage, c.LayerCosts(), speeds)
	if err != nil {
		return nil, err
	}
	q, err := scheduler.WithLayers(p, split)
	if err != nil {
		return nil, err
	}
	before, err := Run(p, c, Options{Iterations: opt.Iterations, Overlap: opt.Overlap})
	if err != nil {
		return nil, err
	}
	after, err := Run(q, c, Options{Iterations: opt.Iterations, Overlap: opt.Overlap})
	if err != nil {
		return nil, err
	}
	out := &Balanced{Plan: p, Before: before.IterationTimeS, After: after.IterationTimeS, Cluster: c}
	if after.IterationTimeS < before.IterationTimeS {
		out.Plan, out.Kept = q, true
	}
	return out, nil
}
