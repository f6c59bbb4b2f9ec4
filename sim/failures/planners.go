package failures

import (
	"fmt"

	"stagecoach/coordinator/policy"
	"stagecoach/planner"
	"stagecoach/scheduler"
)

// Planner plans the job's schedule through package planner, as the
// coordinator does.
type Planner struct {
	// Snapshot is the job's: its schedule, rules and, for SkipPipe, the
	// planner's input priced for every node (Input, with the starting
	// placement). The members, their stages and the previous plan are
	// set per call.
	Snapshot planner.Snapshot
	// Cache, when set, keeps the plans made per placement: the SkipPipe
	// planner searches many candidates, and runs of one trace with other
	// checkpoint intervals meet the same placements.
	Cache map[string]*scheduler.Plan
}

// family is the schedule's registry entry.
func (p Planner) family() (planner.Family, error) {
	f, err := planner.Lookup(p.Snapshot.Schedule)
	if err != nil {
		return f, fmt.Errorf("failures: %w", err)
	}
	return f, nil
}

// recovery is the schedule's recovery family for the policy.
func recovery(f planner.Family) policy.Family { return policy.FamilyOf(f.Repath, f.Vacancy) }

// stages is the pipeline depth (classic) or the stage count (SkipPipe).
func (p Planner) stages() int {
	if in := p.Snapshot.Input; in != nil && len(in.StageSizes) > 0 {
		return len(in.StageSizes)
	}
	return p.Snapshot.Rules.Stages
}

// plan plans on members (placed by the planner) or on parts (members per
// stage, a vacant stage empty); prev is the plan being replaced.
func (p Planner) plan(members []string, parts [][]string, prev *scheduler.Plan) (*scheduler.Plan, error) {
	key := fmt.Sprint(members, parts)
	if c, ok := p.Cache[key]; ok {
		return c, nil
	}
	s := p.Snapshot
	s.Members, s.Parts, s.Prev = members, parts, prev
	out, err := planner.Plan(s)
	if err == nil && p.Cache != nil {
		p.Cache[key] = out
	}
	return out, err
}
