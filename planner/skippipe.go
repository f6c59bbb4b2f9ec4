package planner

import (
	"fmt"
	"math"

	"stagecoach/costmodel"
	"stagecoach/model"
	"stagecoach/scheduler"
	"stagecoach/scheduler/skippipe"
)

// skipPipe plans SkipPipe variant f: on a fixed placement (Parts), on
// Prev's placement, or fresh (the planner places the members).
func skipPipe(f Family, s Snapshot) (*scheduler.Plan, error) {
	if s.Parts != nil {
		return onPartition(f, s)
	}
	sc, err := priced(s, s.Members)
	if err != nil {
		return nil, err
	}
	switch {
	case s.Prev != nil:
		if sc.Partition, err = prevPartition(s.Prev, s.Members); err != nil {
			return nil, err
		}
	case s.Input != nil && s.Input.Partition != nil:
		// The caller fixed the placement (every variant of a comparison
		// over one placement): it holds for the input's nodes only.
		if fmt.Sprint(s.Members) != fmt.Sprint(s.Input.NodeNames) {
			return nil, fmt.Errorf("the input's placement covers its %d nodes, not these %d members", len(s.Input.NodeNames), len(s.Members))
		}
		sc.Partition = s.Input.Partition
	default:
		if sc.Partition, err = place(s, sc); err != nil {
			return nil, err
		}
	}
	sc.RefinePlacement = false
	p, _, err := skippipe.PlanVariant(f.variant, sc)
	return p, err
}

// Placement is the placement a fresh SkipPipe plan of s takes (node
// indices into Members, per stage). Comparisons of several variants
// compute it once and give it to each as Input.Partition.
func Placement(s Snapshot) ([][]int, error) {
	f, err := Lookup(s.Schedule)
	if err != nil {
		return nil, err
	}
	if f.Kind != KindSkipPipe {
		return nil, fmt.Errorf("%s places its workers in member order: it has no placement to choose", f.Name)
	}
	sc, err := priced(s, s.Members)
	if err != nil {
		return nil, err
	}
	return place(s, sc)
}

// onPartition plans with Parts[s] holding stage s; stages may be short,
// or empty (vacant) for families that skip.
func onPartition(f Family, s Snapshot) (*scheduler.Plan, error) {
	for st, ns := range s.Parts {
		if len(ns) == 0 && !f.Vacancy {
			return nil, fmt.Errorf("stage %d has no worker and %s visits every stage", st, f.Name)
		}
	}
	stages, err := stageLayers(s, len(s.Parts))
	if err != nil {
		return nil, err
	}
	mbs := s.Rules.Microbatches
	if in := s.Input; mbs == 0 && in != nil && len(in.StageSizes) > 0 {
		mbs = in.MicrobatchesPerOrigin * in.StageSizes[0]
	}
	return skippipe.PlanOnPartition(f.variant, s.Parts, stages, mbs, func(names []string) (skippipe.Config, error) {
		return priced(s, names)
	})
}

// stageLayers are the layer ranges of the full pipeline of n stages:
// Prev's when it has n stages, else an even split with the head on
// stage 0 (SkipPipe's layout).
func stageLayers(s Snapshot, n int) ([]scheduler.Stage, error) {
	if s.Prev != nil && len(s.Prev.Stages) == n {
		out := make([]scheduler.Stage, n)
		for i, st := range s.Prev.Stages {
			out[i] = scheduler.Stage{FirstLayer: st.FirstLayer, Layers: st.Layers}
		}
		return out, nil
	}
	layers := s.Rules.Layers
	if s.Input != nil && s.Input.Layers > 0 {
		layers = s.Input.Layers
	}
	specs, err := model.Split(layers, n, model.HeadFirst)
	if err != nil {
		return nil, err
	}
	out := make([]scheduler.Stage, n)
	for i, sp := range specs {
		out[i] = scheduler.Stage{FirstLayer: sp.Lo, Layers: sp.Hi - sp.Lo}
	}
	return out, nil
}

// prevPartition is prev's placement over names (node indices per stage).
func prevPartition(prev *scheduler.Plan, names []string) ([][]int, error) {
	at := map[string]int{}
	for i, n := range names {
		at[n] = i
	}
	parts := make([][]int, len(prev.Stages))
	for st, ws := range prev.StageWorkers() {
		for _, w := range ws {
			i, ok := at[prev.Workers[w].Node]
			if !ok {
				return nil, fmt.Errorf("previous plan's node %q is not a member", prev.Workers[w].Node)
			}
			parts[st] = append(parts[st], i)
		}
	}
	return parts, nil
}

// stageSizes are the configured nodes per stage.
func stageSizes(r Rules) ([]int, error) {
	if r.StageSizes != nil {
		return append([]int(nil), r.StageSizes...), nil
	}
	if r.Stages < 1 || r.Workers%r.Stages != 0 {
		return nil, fmt.Errorf("%d workers do not split evenly over %d stages", r.Workers, r.Stages)
	}
	sizes := make([]int, r.Stages)
	for i := range sizes {
		sizes[i] = r.Workers / r.Stages
	}
	return sizes, nil
}

// priced is the SkipPipe planner's input for the named nodes, in that
// order, without a placement: Input restricted to them, or priced from
// Costs (a uniform loopback network without one).
func priced(s Snapshot, names []string) (skippipe.Config, error) {
	if s.Input != nil {
		sc, err := subset(*s.Input, names)
		if obj := objective(s, s.Costs); obj != nil {
			sc.Objective = obj
		}
		return sc, err
	}
	r := s.Rules
	var sc skippipe.Config
	sizes, err := stageSizes(r)
	if err != nil {
		return sc, err
	}
	if r.Microbatches%sizes[0] != 0 {
		return sc, fmt.Errorf("%d microbatches do not split evenly over the %d origins of stage 0", r.Microbatches, sizes[0])
	}
	n := len(names)
	if s.Costs == nil {
		sc = skippipe.Config{
			NodeNames: names, StageSizes: sizes, MicrobatchesPerOrigin: r.Microbatches / sizes[0],
			Layers: r.Layers, Samples: r.Samples, Rules: scheduler.DefaultSkipRules(len(sizes)),
			Delay: make([][]float64, n), ForwardS: make([]float64, n), Memory: r.Microbatches,
		}
		for i := range n {
			sc.Delay[i] = make([]float64, n)
			for j := range n {
				if i != j {
					sc.Delay[i][j] = 1e-3
				}
			}
			sc.ForwardS[i] = 1e-2
		}
	} else {
		costs := s.Costs
		payload := float64(r.Samples) * costs.Compute.ActivationBytesPerSample
		if r.Model != nil {
			// SkipPipe plans hold the embedding and head on stage 0:
			// size the all-reduces for that split, whatever plan
			// calibrated.
			if costs, err = costs.Clone(); err != nil {
				return sc, err
			}
			if costs.Compute.StageGradientBytes, err = costmodel.GradientBytesOfStages(*r.Model, len(sizes), model.HeadFirst); err != nil {
				return sc, err
			}
			payload = float64(r.Samples) * costmodel.ActivationBytes(*r.Model)
		}
		mem := 0
		if costs.Workload != nil {
			mem = costs.Workload.Memory
		}
		sc, err = costmodel.SkipPipeInput(costs, costmodel.SkipPipeJob{
			Names: names, StageSizes: sizes, Microbatches: r.Microbatches,
			Layers: r.Layers, Samples: r.Samples, PayloadBytes: payload, Memory: mem,
		})
		if err != nil {
			return sc, err
		}
		sc.Objective = objective(s, costs)
	}
	sc.CollisionAware, sc.Seed = true, r.Seed
	return sc, nil
}

// place chooses a fresh placement: the SkipPipe planner's, refined by its
// own estimate. With an Objective and a cost model, the refined placement
// is kept only if the plan over it scores better than over the unrefined
// one: the refinement judges placements by the pipeline alone, and the
// all-reduces can undo its gain (two replicas of a stage joined by a slow
// link).
func place(s Snapshot, sc skippipe.Config) ([][]int, error) {
	if s.Input != nil {
		sc.RefinePlacement = s.Input.RefinePlacement
		pl, err := skippipe.PlacementFor(sc)
		if err != nil {
			return nil, err
		}
		return pl.Partition, nil
	}
	sc.RefinePlacement = true
	pl, err := skippipe.PlacementFor(sc)
	if err != nil {
		return nil, err
	}
	if s.Costs == nil || sc.Objective == nil {
		return pl.Partition, nil
	}
	sc.RefinePlacement = false
	unrefined, err := skippipe.PlacementFor(sc)
	if err != nil {
		return nil, err
	}
	best, bestS := pl.Partition, math.Inf(1)
	for _, cand := range [][][]int{pl.Partition, unrefined.Partition} {
		try := sc
		try.Partition = cand
		p, _, err := skippipe.PlanVariant(skippipe.CA, try)
		if err != nil {
			continue
		}
		if v := sc.Objective(p); v < bestS {
			best, bestS = cand, v
		}
	}
	return best, nil
}

// objective scores a plan by its simulated iteration time on k, with the
// all-reduce algorithms the final plan gets (nil without a simulator or a
// cost model).
func objective(s Snapshot, k *costmodel.Cluster) func(*scheduler.Plan) float64 {
	if s.Simulate == nil || k == nil {
		return nil
	}
	return func(p *scheduler.Plan) float64 {
		if _, err := costmodel.ChooseAllReduce(p, k); err != nil {
			return math.Inf(1)
		}
		v, err := s.Simulate(p, k)
		if err != nil {
			return math.Inf(1)
		}
		return v
	}
}

// subset is base restricted to the named nodes, in that order, without a
// placement (callers fix it, and a fixed one is never refined).
func subset(base skippipe.Config, names []string) (skippipe.Config, error) {
	idx := map[string]int{}
	for i, n := range base.NodeNames {
		idx[n] = i
	}
	c := base
	c.Partition, c.RefinePlacement = nil, false
	c.NodeNames, c.ForwardS = nil, nil
	c.Delay = make([][]float64, len(names))
	if base.LinkBusy != nil {
		c.LinkBusy = make([][]float64, len(names))
	}
	pos := make([]int, len(names))
	for i, n := range names {
		j, ok := idx[n]
		if !ok {
			return c, fmt.Errorf("node %q is not in the SkipPipe input", n)
		}
		pos[i] = j
		c.NodeNames = append(c.NodeNames, n)
		c.ForwardS = append(c.ForwardS, base.ForwardS[j])
	}
	for i, a := range pos {
		c.Delay[i] = make([]float64, len(pos))
		if c.LinkBusy != nil {
			c.LinkBusy[i] = make([]float64, len(pos))
		}
		for k, b := range pos {
			c.Delay[i][k] = base.Delay[a][b]
			if c.LinkBusy != nil {
				c.LinkBusy[i][k] = base.LinkBusy[a][b]
			}
		}
	}
	return c, nil
}
