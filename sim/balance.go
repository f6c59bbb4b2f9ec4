package sim

import (
	"fmt"

	"stagecoach/scheduler"
)

// LayerCosts prices a plan's parts for scheduler.BalanceLayers from the
// cluster's compute costs: a block's forward and backward per sample,
// and the head's loss (compute.loss_layers). The embedding is priced
// inside the first stage's layers here, as the simulator prices it.
func (c *Cluster) LayerCosts() scheduler.LayerCosts {
	k := c.Compute
	return scheduler.LayerCosts{Block: k.LayerForwardS * (1 + k.BackwardRatio), Head: k.LossLayers * k.LayerForwardS}
}

// StageSpeeds gives each stage of p the speed of the slowest node holding
// it (replicas wait for each other at the all-reduce; a worker holding
// several stages runs each at its node's speed).
func (c *Cluster) StageSpeeds(p *scheduler.Plan) ([]float64, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	speeds := make([]float64, len(p.Stages))
	for w, wk := range p.Workers {
		_, n, err := c.node(wk.Node)
		if err != nil {
			return nil, fmt.Errorf("worker %d: %w", w, err)
		}
		for _, s := range wk.Stages {
			if s < 0 || s >= len(speeds) {
				return nil, fmt.Errorf("worker %d holds stage %d of %d", w, s, len(speeds))
			}
			if speeds[s] == 0 || n.Speed < speeds[s] {
				speeds[s] = n.Speed
			}
		}
	}
	for s, v := range speeds {
		if v == 0 {
			return nil, fmt.Errorf("stage %d is held by no worker", s)
		}
	}
	return speeds, nil
}

// Balanced is the outcome of Balance.
type Balanced struct {
	// Plan is the faster of the balanced plan and the original.
	Plan *scheduler.Plan
	// Before and After are the simulated iteration times of the
	// original and of the balanced plan.
	Before, After float64
	// Kept says the balanced plan was faster and is the one returned.
	Kept bool
}

// Balance re-places p's layers over its stages with
// scheduler.BalanceLayers at this cluster's costs and node speeds, then
// simulates both plans and returns the faster (the original on a tie):
// the bottleneck stage is what the split optimises, the simulation says
// whether the whole iteration (fill, drain, communication) gained.
// A calibrated per-stage forward time (compute.stage_forward_s) belongs
// to the original split, so it refuses such a cluster.
func Balance(p *scheduler.Plan, c *Cluster, opt Options) (*Balanced, error) {
	if len(c.Compute.StageForwardS) > 0 {
		return nil, fmt.Errorf("balance: cluster %q prices whole stages (compute.stage_forward_s); balancing needs per-layer costs (compute.layer_forward_s)", c.Name)
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
	out := &Balanced{Plan: p, Before: before.IterationTimeS, After: after.IterationTimeS}
	if after.IterationTimeS < before.IterationTimeS {
		out.Plan, out.Kept = q, true
	}
	return out, nil
}
