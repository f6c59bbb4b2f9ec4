// Package policy holds the coordinator's recovery decisions as pure
// functions: from what the coordinator knows at a failure or an iteration
// boundary (the plan's placement, which workers answer and which step each
// holds, who registered) to what it should do (re-path on the survivors or
// restore from a checkpoint, which workers to plan on, where newcomers go).
// No RPC, no etcd, no clock: the coordinator gathers the facts and carries
// the decision out, and every decision is unit-tested here without a
// process (see coordinator/recover.go for the mechanism).
package policy

import (
	"fmt"
	"sort"
)

// Family tells schedules apart by how they recover.
type Family int

const (
	// Classic schedules (GPipe, 1F1B, interleaved, zero bubble, ...) need
	// every stage on every path: a loss always restores.
	Classic Family = iota
	// SkipPipe paths may skip stages: a loss before any Step re-paths the
	// same iteration on the survivors, leaving stages without a worker
	// vacant.
	SkipPipe
	// SkipPipeFull is GPipe over SkipPipe's placement: it re-paths, but
	// never with a vacant stage.
	SkipPipeFull
)

// FamilyOf is the recovery family of a schedule that can (or cannot)
// re-path and leave a stage vacant (the planner registry's capabilities).
func FamilyOf(repath, vacancy bool) Family {
	switch {
	case !repath:
		return Classic
	case vacancy:
		return SkipPipe
	}
	return SkipPipeFull
}

// Placement is a plan's workers and the stages they hold.
type Placement struct {
	// Workers are the plan workers' names, in plan order.
	Workers []string
	// StageWorkers lists, per stage, the plan workers holding it (indices
	// into Workers).
	StageWorkers [][]int
}

// Failure is what the coordinator knows when an iteration failed.
type Failure struct {
	Family Family
	// Step is the step that failed.
	Step int64
	// Stepping is true when the failure hit the Step fan-out (some
	// workers may have applied the step).
	Stepping bool
	Placement
	// Applied maps each surviving plan worker (registered and answering)
	// to the step it last applied. Plan workers not in it are lost.
	Applied map[string]int64
}

// Action is what a recovery does.
type Action int

const (
	// Restore rebuilds the plan on healthy workers and loads the last
	// checkpoint (every schedule can).
	Restore Action = iota
	// Repath retries the failed step on the survivors with the same
	// placement minus the lost workers; nothing is restored.
	Repath
)

func (a Action) String() string {
	if a == Repath {
		return "repath"
	}
	return "restore"
}

// Decision is a recovery's plan.
type Decision struct {
	Action Action
	// Why says why a SkipPipe plan cannot re-path (empty otherwise).
	Why string
	// Parts, for Repath, are the survivors per stage (empty: vacant).
	Parts [][]string
	// Lost names the plan workers that are gone, in plan order.
	Lost []string
}

// Decide chooses between re-path and restore. SkipPipe re-paths when no
// Step was sent, every survivor holds the previous step, no stage-0 worker
// (an origin: the microbatches it starts would be lost) is gone, and some
// stage besides stage 0 keeps a worker; a stage left without one becomes
// vacant, which SkipPipeFull (never skipping) cannot have.
func Decide(f Failure) Decision {
	d := Decision{Action: Restore}
	for _, w := range f.Workers {
		if _, ok := f.Applied[w]; !ok {
			d.Lost = append(d.Lost, w)
		}
	}
	if f.Family == Classic {
		return d
	}
	if f.Stepping {
		d.Why = "the failure hit the Step fan-out (some workers may have stepped)"
		return d
	}
	for _, w := range f.Workers {
		if a, ok := f.Applied[w]; ok && a != f.Step-1 {
			d.Why = fmt.Sprintf("worker %s holds step %d, not %d", w, a, f.Step-1)
			return d
		}
	}
	parts := make([][]string, len(f.StageWorkers))
	vacant := 0
	for s, ws := range f.StageWorkers {
		for _, w := range ws {
			name := f.Workers[w]
			if _, ok := f.Applied[name]; ok {
				parts[s] = append(parts[s], name)
			} else if s == 0 {
				d.Why = fmt.Sprintf("stage-0 worker %s is lost", name)
				return d
			}
		}
		if len(parts[s]) == 0 {
			vacant++
		}
	}
	if vacant >= len(f.StageWorkers)-1 {
		d.Why = "no stage but stage 0 has a worker left"
		return d
	}
	if vacant > 0 && f.Family == SkipPipeFull {
		d.Why = "a stage has no replica left and skippipe-full visits every stage"
		return d
	}
	d.Action, d.Parts = Repath, parts
	return d
}

// Settle says how many of live healthy workers a restore plans on once the
// wait for replacements is over: want when that many are there; else the
// most that still hold every stage (a multiple of stages for classic
// schedules, at least one per stage for SkipPipe); ok false when too few.
func Settle(family Family, live, want, stages int) (n int, ok bool) {
	if live >= want {
		return want, true
	}
	n = live
	if family == Classic {
		n -= n % stages
	}
	return n, n >= stages && n > 0
}

// Prefer picks n of live (n <= len(live)): the current plan's workers
// first, then the others by name; the result is sorted by name (classic
// placement is by name).
func Prefer(live []string, inPlan map[string]bool, n int) []string {
	out := append([]string(nil), live...)
	sort.SliceStable(out, func(i, j int) bool {
		if inPlan[out[i]] != inPlan[out[j]] {
			return inPlan[out[i]]
		}
		return out[i] < out[j]
	})
	out = out[:min(n, len(out))]
	sort.Strings(out)
	return out
}

// Partition places members on a SkipPipe plan's stages: a member keeps the
// stage it held in p; a newcomer fills a vacant stage first, else the
// stage furthest below its configured size (want), the lowest stage on
// ties (stage 0's origins carry the data).
func Partition(p Placement, members []string, want []int) [][]string {
	parts := make([][]string, len(p.StageWorkers))
	held := map[string]int{}
	for s, ws := range p.StageWorkers {
		for _, w := range ws {
			held[p.Workers[w]] = s
		}
	}
	var fresh []string
	for _, m := range members {
		if s, ok := held[m]; ok {
			parts[s] = append(parts[s], m)
		} else {
			fresh = append(fresh, m)
		}
	}
	short := func(s int) int {
		if s < len(want) {
			return want[s] - len(parts[s])
		}
		return -len(parts[s])
	}
	for _, m := range fresh {
		best := 0
		for s := 1; s < len(parts); s++ {
			vs, vb := len(parts[s]) == 0, len(parts[best]) == 0
			if vs && !vb || vs == vb && short(s) > short(best) {
				best = s
			}
		}
		parts[best] = append(parts[best], m)
	}
	return parts
}

// Rejoin decides, at an iteration boundary, which workers the next plan
// runs on when the current plan (current, plan order) is short of want and
// healthy newcomers (ready) registered. It returns nil when the plan stays
// as it is: for classic schedules only a whole multiple of stages larger
// than today's plan is worth a change.
func Rejoin(family Family, current, ready []string, want, stages int) []string {
	if len(current) >= want || len(ready) == 0 {
		return nil
	}
	members := append(append([]string(nil), current...), ready...)
	if family == Classic {
		n := min(len(members), want)
		n -= n % stages
		if n <= len(current) {
			return nil
		}
		inPlan := map[string]bool{}
		for _, m := range current {
			inPlan[m] = true
		}
		return Prefer(members, inPlan, n)
	}
	if len(members) > want {
		members = members[:want]
	}
	return members
}
