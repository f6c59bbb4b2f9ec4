package costmodel

import (
	"fmt"

	"stagecoach/scheduler"
	"stagecoach/scheduler/skippipe"
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
// the default rules and the per-node cap (skippipe.VisitCap, at least
// job.Memory). The caller adds the seed, the search options and the
// objective.
func SkipPipeInput(c *Cluster, job SkipPipeJob) (skippipe.Config, error) {
	var sc skippipe.Config
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
	forward, err := c.NodeForwardS(job.Names, job.Layers, ns, job.Samples)
	if err != nil {
		return sc, err
	}
	stageF := c.stageForwardS(job.Layers, ns) * float64(job.Samples)
	sc = skippipe.Config{
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
	sc.ForwardS = forward
	if sc.Delay, sc.LinkBusy, err = c.HopMatrix(job.Names, c.MessageBytes(job.PayloadBytes)); err != nil {
		return sc, err
	}
	if job.PathStages > 0 {
		sc.Rules.PathStages = job.PathStages
	}
	sc.Memory = max(job.Memory, skippipe.VisitCap(job.Microbatches, sc.Rules.PathStages, job.StageSizes), 1)
	return sc, nil
}
