package costmodel

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
		_, n, err := c.Lookup(wk.Node)
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

// stageForwardS is one sample's forward through an average stage of
// layers/stages layers on a node of speed 1: the calibrated stages' mean
// when the cluster has them.
func (c *Cluster) stageForwardS(layers, stages int) float64 {
	k := &c.Compute
	if n := len(k.StageForwardS); n > 0 {
		s := 0.0
		for _, v := range k.StageForwardS {
			s += v
		}
		return s / float64(n)
	}
	return k.LayerForwardS * float64(layers) / float64(max(stages, 1))
}

// NodeForwardS prices, per named node, one microbatch of samples'
// forward through an average stage (layers over stages) at the node's
// speed; never 0, which the SkipPipe planner could not compare. c must
// list every name or accept any node.
func (c *Cluster) NodeForwardS(names []string, layers, stages, samples int) ([]float64, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	perStage := c.stageForwardS(layers, stages) * float64(samples)
	out := make([]float64, len(names))
	for i, name := range names {
		_, nd, err := c.Lookup(name)
		if err != nil {
			return nil, fmt.Errorf("cost model: %w", err)
		}
		out[i] = perStage / nd.Speed
		if !(out[i] > 0) {
			out[i] = 1e-6
		}
	}
	return out, nil
}

// PerLayer returns c priced by the layer for plan p, so that p's layers
// may be split anew (balancing): c itself when it has no per-stage
// forward times, else a copy without them (and without per-stage
// gradient bytes) in which every node holding a stage of p runs at its
// own speed times what its measured stage took against LayerForwardS per
// layer: stage s of Layers_s layers measured at StageForwardS[s] makes
// its nodes Layers_s x LayerForwardS / StageForwardS[s] times as fast
// (the slowest such stage of a node decides). A calibration's per-stage
// times describe the split they were measured on, which a new split
// cannot use.
func (c *Cluster) PerLayer(p *scheduler.Plan) (*Cluster, error) {
	k := c.Compute
	if len(k.StageForwardS) == 0 {
		return c, nil
	}
	if len(k.StageForwardS) != len(p.Stages) {
		return nil, fmt.Errorf("cost model %q prices %d stages (compute.stage_forward_s), the plan has %d", c.Name, len(k.StageForwardS), len(p.Stages))
	}
	if !(k.LayerForwardS > 0) {
		return nil, fmt.Errorf("cost model %q: compute.layer_forward_s is %v, want > 0 to price single layers", c.Name, k.LayerForwardS)
	}
	out, err := c.Clone()
	if err != nil {
		return nil, err
	}
	factor := map[string]float64{}
	for w, wk := range p.Workers {
		for _, s := range wk.Stages {
			if s < 0 || s >= len(p.Stages) {
				return nil, fmt.Errorf("plan worker %d holds stage %d of %d", w, s, len(p.Stages))
			}
			t := k.StageForwardS[s]
			if !(t > 0) {
				return nil, fmt.Errorf("cost model %q: stage %d's forward time is %v, want > 0", c.Name, s, t)
			}
			f := float64(p.Stages[s].Layers) * k.LayerForwardS / t
			if old, ok := factor[wk.Node]; !ok || f < old {
				factor[wk.Node] = f
			}
		}
	}
	for name, f := range factor {
		i, nd, err := out.Lookup(name)
		if err != nil {
			return nil, err
		}
		if i < 0 {
			out.Nodes = append(out.Nodes, Node{Name: name, Speed: nd.Speed * f})
			continue
		}
		out.Nodes[i].Speed = nd.Speed * f
	}
	out.Compute.StageForwardS = nil
	out.Compute.StageGradientBytes = nil
	// Re-index the nodes appended above.
	if out, err = out.Clone(); err != nil {
		return nil, err
	}
	return out, nil
}
