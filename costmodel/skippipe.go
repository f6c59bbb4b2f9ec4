package costmodel

import (
	"fmt"

	"stagecoach/scheduler"
)

// SkipPipeJob is the job side of the SkipPipe planner's input: the nodes
// (by name, in the order the plan will place them) and how they split
// into stages, and the training job's shape.
type SkipPipeJob struct {
	Names        []string
	StageSizes   []int
	Microbatches int // per iteration, over all of stage 0's origins
	Layers       int
	Samples      int // per microbatch
	// PayloadBytes is one microbatch's activations (framing is added).
	PayloadBytes float64
	// PathStages overrides the default rules' stages per path (0 keeps it).
	PathStages int
	// Memory is a floor for the per-node cap, in microbatches.
	Memory int
}

// SkipPipeInput prices job on c for the SkipPipe planner: every node's
// forward of one microbatch through an average stage, the hop matrices
// of one microbatch's message (HopMatrix), the backward and loss ratios,
// the default rules and the per-node cap (VisitCap, at least
// job.Memory). The caller adds the seed, the search options and the
// objective.
func SkipPipeInput(c *Cluster, job SkipPipeJob) (scheduler.SkipPipeConfig, error) {
	var sc scheduler.SkipPipeConfig
	ns := len(job.StageSizes)
	if ns < 2 {
		return sc, fmt.Errorf("cost model %q: skippipe needs at least 2 stages, got %d", c.Name, ns)
	}
	if job.Layers < ns || job.Samples < 1 {
		return sc, fmt.Errorf("cost model %q: %d layers and %d samples per microbatch do not fill %d stages", c.Name, job.Layers, job.Samples, ns)
	}
	origins := job.StageSizes[0]
	if origins < 1 || job.Microbatches%origins != 0 {
		return sc, fmt.Errorf("%d microbatches do not split evenly over the %d origins of stage 0", job.Microbatches, origins)
	}
	if err := c.Validate(); err != nil {
		return sc, err
	}
	k := &c.Compute
	// One microbatch's forward through an average stage on a node of
	// speed 1: the calibrated stages' mean when there are some.
	stageF := k.LayerForwardS * float64(job.Layers) / float64(ns)
	if n := len(k.StageForwardS); n > 0 {
		s := 0.0
		for _, v := range k.StageForwardS {
			s += v
		}
		stageF = s / float64(n)
	}
	stageF *= float64(job.Samples)
	sc = scheduler.SkipPipeConfig{
		NodeNames: job.Names, StageSizes: job.StageSizes, MicrobatchesPerOrigin: job.Microbatches / origins,
		Layers: job.Layers, Samples: job.Samples, BackwardRatio: k.BackwardRatio,
		Rules: scheduler.DefaultSkipRules(ns),
	}
	if stageF > 0 {
		sc.LossRatio = k.LossLayers * k.LayerForwardS * float64(job.Samples) / stageF
	}
	if sc.LossRatio == 0 {
		sc.LossRatio = 1e-9 // zero means the planner's default; the loss is free here
	}
	for _, name := range job.Names {
		_, nd, err := c.Lookup(name)
		if err != nil {
			return sc, fmt.Errorf("cost model: %w", err)
		}
		f := stageF / nd.Speed
		if !(f > 0) {
			f = 1e-6 // the planner needs some cost to compare paths
		}
		sc.ForwardS = append(sc.ForwardS, f)
	}
	var err error
	if sc.Delay, sc.LinkBusy, err = c.HopMatrix(job.Names, c.MessageBytes(job.PayloadBytes)); err != nil {
		return sc, err
	}
	if job.PathStages > 0 {
		sc.Rules.PathStages = job.PathStages
	}
	sc.Memory = max(job.Memory, VisitCap(job.Microbatches, sc.Rules.PathStages, job.StageSizes), 1)
	return sc, nil
}

// VisitCap is the least per-node cap, in microbatches held at once, that
// lets every SkipPipe path visit its stages: microbatches paths each
// visit pathStages-1 stages past stage 0, spread over those stages'
// nodes (sizes[1:]), and when paths visit every stage, the smallest
// stage must hold all of them.
func VisitCap(microbatches, pathStages int, sizes []int) int {
	if len(sizes) < 2 {
		return 1
	}
	others, smallest := 0, sizes[1]
	for _, k := range sizes[1:] {
		others += k
		smallest = min(smallest, k)
	}
	need := (microbatches*(pathStages-1) + others - 1) / max(others, 1)
	if pathStages == len(sizes) && smallest > 0 {
		need = max(need, (microbatches+smallest-1)/smallest)
	}
	return max(need, 1)
}
