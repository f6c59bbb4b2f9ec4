// Package auto searches for the fastest schedule of one pipeline shape on
// one cost model: every named schedule that takes the shape, and the list
// scheduler's candidates made at the cost model's own forward, backward
// and weight-gradient times (scheduler.ListCandidates, the search the
// zero-bubble authors' automatic scheduler makes), each simulated on the
// cluster. The fastest candidate that validates and fits the memory
// limits wins; a named schedule wins a tie, so the result is never slower
// than the best named schedule of the same run.
//
// The search is policy on top of the simulator (it imports sim); the
// runtime never imports it.
package auto

import (
	"errors"
	"fmt"
	"math"

	"stagecoach/scheduler"
	"stagecoach/sim"
)

// Candidate is one schedule tried.
type Candidate struct {
	// Name is the named schedule, or "list" for a list-scheduled one.
	Name string
	// Desc describes a list-scheduled candidate's knobs.
	Desc string
	Plan *scheduler.Plan
	// IterationS is its simulated iteration time (0 when infeasible).
	IterationS float64
	// Infeasible says why it cannot run (memory, shape); empty otherwise.
	Infeasible string
}

// Label names the candidate for people.
func (c Candidate) Label() string {
	if c.Desc != "" {
		return c.Desc
	}
	return c.Name
}

// Result is a search's outcome.
type Result struct {
	// Best is the fastest feasible candidate; its plan is named "auto".
	Best Candidate
	// BestNamed is the fastest feasible named schedule (zero when none).
	BestNamed Candidate
	// Candidates lists everything tried, in the order tried.
	Candidates []Candidate
}

// Search finds the fastest schedule for spec on cluster c. spec.Nodes
// places the workers on the cluster's nodes as for any schedule.
func Search(spec scheduler.Spec, c *sim.Cluster) (*Result, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	res := &Result{}
	// Every registered schedule (SkipPipe's, which need a workload rather
	// than a shape, are not in the registry).
	for _, name := range scheduler.Names() {
		pl, err := scheduler.Generate(name, spec)
		if err != nil {
			res.Candidates = append(res.Candidates, Candidate{Name: name, Infeasible: err.Error()})
			continue
		}
		res.Candidates = append(res.Candidates, evaluate(Candidate{Name: name, Plan: pl}, c))
	}
	costs, err := listCosts(c)
	if err != nil {
		return nil, err
	}
	for _, lc := range scheduler.ListCandidates(spec, costs) {
		res.Candidates = append(res.Candidates, evaluate(Candidate{Name: "list", Desc: lc.Desc, Plan: lc.Plan}, c))
	}
	for _, cand := range res.Candidates {
		if cand.Infeasible != "" {
			continue
		}
		if res.Best.Plan == nil || cand.IterationS < res.Best.IterationS {
			res.Best = cand
		}
		if cand.Name != "list" && (res.BestNamed.Plan == nil || cand.IterationS < res.BestNamed.IterationS) {
			res.BestNamed = cand
		}
	}
	if res.Best.Plan == nil {
		return res, errors.New("auto: no schedule fits this shape and these limits")
	}
	best := *res.Best.Plan
	best.Schedule = "auto"
	res.Best.Plan = &best
	return res, nil
}

// evaluate validates and simulates one candidate.
func evaluate(cand Candidate, c *sim.Cluster) Candidate {
	if err := scheduler.Validate(cand.Plan); err != nil {
		cand.Infeasible = err.Error()
		return cand
	}
	if _, err := sim.ChooseAllReduce(cand.Plan, c); err != nil {
		cand.Infeasible = err.Error()
		return cand
	}
	r, err := sim.Run(cand.Plan, c, sim.Options{})
	if err != nil {
		cand.Infeasible = err.Error()
		return cand
	}
	if r.Infeasible != "" {
		// Over a node's memory in bytes (memory_gib).
		cand.Infeasible = r.Infeasible
		return cand
	}
	cand.IterationS = r.IterationTimeS
	return cand
}

// listCosts turns the cost model's chunk times into the list scheduler's
// integer ticks: a forward is 1000 ticks, the backward and its halves in
// proportion. The layers of one chunk are the model's layers over the
// stages of a two-chunk placement (the list scheduler prices all chunks
// alike; the simulation then prices each as it is).
func listCosts(c *sim.Cluster) (scheduler.ListCosts, error) {
	k := c.Compute
	if k.BackwardRatio <= 0 || k.InputGradRatio <= 0 || k.WeightGradRatio < 0 {
		return scheduler.ListCosts{}, fmt.Errorf("auto: cluster %q: backward ratios must be positive", c.Name)
	}
	ticks := func(ratio float64) int64 { return max(1, int64(math.Round(1000*ratio))) }
	return scheduler.ListCosts{F: 1000, B: ticks(k.BackwardRatio), I: ticks(k.InputGradRatio), W: ticks(k.WeightGradRatio)}, nil
}
