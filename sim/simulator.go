package sim

import (
	"io"

	"stagecoach/costmodel"
	"stagecoach/scheduler"
	"stagecoach/timeline"
)

// Simulator is the simulator as a timeline.Simulator: what the
// coordinator, which does not link this package, is handed to judge
// plans, simulate its calibration and write its trace.
type Simulator struct{}

// Simulate implements timeline.Simulator with Run.
func (Simulator) Simulate(p *scheduler.Plan, c *costmodel.Cluster, detail bool) (*timeline.Run, error) {
	r, err := Run(p, c, Options{Detail: detail})
	if err != nil {
		return nil, err
	}
	return r.Run(), nil
}

// WriteTrace implements timeline.Simulator with WriteChromeTrace.
func (Simulator) WriteTrace(w io.Writer, runs ...*timeline.Run) error {
	rs := make([]*Result, len(runs))
	for i, r := range runs {
		rs[i] = &Result{Schedule: r.Schedule, Plan: r.Plan, Workers: r.Workers, Stages: r.Stages, Microbatches: r.Microbatches,
			Iterations: r.Iterations, IterationTimeS: r.IterationTimeS, MakespanS: r.MakespanS, BubbleFraction: r.BubbleFraction, Timeline: r.Timeline}
	}
	return WriteChromeTrace(w, rs...)
}

// Run is r as a timeline run.
func (r *Result) Run() *timeline.Run {
	return &timeline.Run{Schedule: r.Schedule, Plan: r.Plan, Workers: r.Workers, Stages: r.Stages, Microbatches: r.Microbatches,
		Iterations: r.Iterations, IterationTimeS: r.IterationTimeS, MakespanS: r.MakespanS, BubbleFraction: r.BubbleFraction, Timeline: r.Timeline}
}
