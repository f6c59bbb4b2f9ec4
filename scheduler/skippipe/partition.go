package skippipe

import (
	"fmt"
	"math"

	"stagecoach/scheduler"
)

// PlanOnPartition plans SkipPipe variant with a fixed placement:
// parts[s] names the nodes holding stage s, possibly fewer than a
// partition was made for (after a loss), or none (the stage is vacant:
// every path skips it, scheduler.ExpandStages). stages are the model's
// layer ranges of the full pipeline; microbatches is the iteration's
// total, spread over the stage-0 nodes (the origins). input builds the
// planner's costs (node forward times, hop delays and busy times, rules,
// objective) for the named nodes, in order; the partition and stage
// sizes are set here. Package planner is its caller: recovery (the
// coordinator re-pathing on survivors, the simulator replaying a failure
// trace) plans through planner.Plan.
func PlanOnPartition(variant string, parts [][]string, stages []scheduler.Stage, microbatches int, input func(names []string) (Config, error)) (*scheduler.Plan, error) {
	if len(parts) != len(stages) {
		return nil, fmt.Errorf("skippipe on a partition: %d parts for %d stages", len(parts), len(stages))
	}
	var keep []int
	for s, ns := range parts {
		if len(ns) == 0 {
			if s == 0 {
				return nil, fmt.Errorf("skippipe on a partition: stage 0 has no worker")
			}
			continue
		}
		keep = append(keep, s)
	}
	if len(keep) < 2 {
		return nil, fmt.Errorf("skippipe on a partition: only stage 0 has workers; SkipPipe needs another stage")
	}
	if microbatches%len(parts[0]) != 0 {
		return nil, fmt.Errorf("skippipe on a partition: %d microbatches do not split over %d origins", microbatches, len(parts[0]))
	}
	var names []string
	idx := make([][]int, len(keep))
	for c, s := range keep {
		for _, n := range parts[s] {
			idx[c] = append(idx[c], len(names))
			names = append(names, n)
		}
	}
	sc, err := input(names)
	if err != nil {
		return nil, err
	}
	sc.Partition = idx
	sc.StageSizes = make([]int, len(keep))
	for c, s := range keep {
		sc.StageSizes[c] = len(parts[s])
	}
	expand := func(p *scheduler.Plan) (*scheduler.Plan, error) { return p, nil }
	if len(keep) < len(parts) {
		expand = func(p *scheduler.Plan) (*scheduler.Plan, error) { return scheduler.ExpandStages(p, stages, keep) }
		sc.Rules.PathStages = min(sc.Rules.PathStages, len(keep))
		if obj := sc.Objective; obj != nil {
			sc.Objective = func(p *scheduler.Plan) float64 {
				q, err := expand(p)
				if err != nil {
					return math.Inf(1)
				}
				return obj(q)
			}
		}
	}
	sc.MicrobatchesPerOrigin = microbatches / len(parts[0])
	// Fewer nodes must still hold every visit.
	sc.Memory = max(sc.Memory, VisitCap(microbatches, sc.Rules.PathStages, sc.StageSizes))
	p, _, err := PlanVariant(variant, sc)
	if err == nil {
		p, err = expand(p)
	}
	if err != nil {
		return nil, fmt.Errorf("skippipe on %d nodes: %w", len(names), err)
	}
	return p, nil
}

// VisitCap is the least per-node cap, in microbatches held at
// once, that lets every SkipPipe path visit its stages: microbatches
// paths each visit pathStages-1 stages past stage 0, spread over those
// stages' nodes (sizes[1:]); and when the paths visit every stage, the
// smallest of them holds all the microbatches. Every planning input (the
// coordinator's, `stagecoach sim`'s, recovery's) takes its cap from here.
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
