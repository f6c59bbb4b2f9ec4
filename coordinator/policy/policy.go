// Package policy holds the coordinator's recovery policy as one pure
// function, Decide(state, event) -> action, in the shape of etcd's raft:
// the coordinator (the mechanism) turns etcd watches, RPC errors and
// timers into events, calls Decide with what it knows (the plan, the
// members answering and the step each holds, suspects, the committed
// step and checkpoints, the time) and carries the action out (re-path,
// restore from a checkpoint with replay, rejoin at a boundary, vacate a
// stage, wait, replan, step down, give up). No RPC, no etcd, no clock, no
// goroutine: time is a value in the state, so every decision is tested
// here from scenario files (testdata) without a process. The helpers
// Settle, Prefer, Partition and Rejoin are the pieces Decide is made of;
// the simulator's failure mode (sim/failures) calls the same Decide.
package policy

import "sort"

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
