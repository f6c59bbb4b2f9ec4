package skippipe

import (
	"math"
	"sort"
)

// Prioritised group construction, the start the collision-aware search
// refines: origins are taken hardest first (the slowest best round trip),
// and each one's microbatches, in groups of at most the node cap, take the
// path that least delays the plan so far under the timing estimate. A
// path is a legal stage sequence with, for each stage, the node found by
// a shortest-path pass over delays and compute among nodes with room for
// the whole group. It is the conflict-based search of the authors with
// the branching replaced by a priority order: one pass, no backtracking.

// maxStageSeqs bounds the stage sequences tried per group; maxTimedPaths
// the paths per group timed against the plan so far.
const (
	maxStageSeqs     = 4096
	maxTimedPaths    = 48
	refineTimedPaths = 6 // cheaper construction while refining placements
)

// stageSeqs lists legal stage sequences of k non-first stages (swaps and
// jumps within the rules), in lexicographic order, at most limit of them.
func (nt *spNet) stageSeqs(k, limit int) [][]int {
	ns := len(nt.parts)
	var out [][]int
	cur := make([]int, 0, k)
	used := make([]bool, ns)
	var rec func()
	rec = func() {
		if len(out) >= limit {
			return
		}
		if len(cur) == k {
			out = append(out, append([]int(nil), cur...))
			return
		}
		for s := 1; s < ns; s++ {
			if used[s] {
				continue
			}
			cur = append(cur, s)
			if nt.validStages(cur) {
				used[s] = true
				rec()
				used[s] = false
			}
			cur = cur[:len(cur)-1]
		}
	}
	rec()
	return out
}

// bestNodes picks, for a fixed stage sequence, the nodes with room for
// need more paths minimising the round-trip delays along the path (out
// and back, the return to the origin included) plus forward and backward
// compute. It returns nil when some stage has no such node.
func (nt *spNet) bestNodes(origin int, stages []int, count []int, perNodeCap, need int) []int {
	k := len(stages)
	cost := make([][]float64, k)
	from := make([][]int, k)
	rt := func(a, b int) float64 { return nt.hopDelay(a, b) + nt.hopDelay(b, a) }
	for i, s := range stages {
		part := nt.parts[s]
		cost[i] = make([]float64, len(part))
		from[i] = make([]int, len(part))
		for x, v := range part {
			cost[i][x] = math.Inf(1)
			if count[v]+need > perNodeCap {
				continue
			}
			own := (1 + nt.bwdRatio) * nt.fwd[v]
			if i == k-1 {
				own += rt(v, origin)
			}
			if i == 0 {
				cost[i][x] = rt(origin, v) + own
				continue
			}
			for y, u := range nt.parts[stages[i-1]] {
				if c := cost[i-1][y] + rt(u, v) + own; c < cost[i][x] {
					cost[i][x], from[i][x] = c, y
				}
			}
		}
	}
	best := -1
	for x := range cost[k-1] {
		if !math.IsInf(cost[k-1][x], 1) && (best < 0 || cost[k-1][x] < cost[k-1][best]) {
			best = x
		}
	}
	if best < 0 {
		return nil
	}
	path := make([]int, k+1)
	path[0] = origin
	for i := k - 1; i >= 0; i-- {
		path[i+1] = nt.parts[stages[i]][best]
		best = from[i][best]
	}
	return path
}

// constructGroups builds paths group by group as described above. It
// returns nil when some group finds no path (the caller falls back to
// the balanced greedy).
func (nt *spNet) constructGroups(ev *spEval, evals *int, seqs [][]int, timed, groupSize, rounds int) *spState {
	k := nt.rules.PathStages - 1
	if len(seqs) == 0 {
		return nil
	}
	m := len(nt.mbOrigin)
	st := &spState{paths: make([][]int, m), count: make([]int, len(nt.names))}
	// Groups: consecutive microbatches of one origin, at most cap each.
	type group struct{ first, size, origin int }
	var groups []group
	for mb := 0; mb < m; {
		o := nt.mbOrigin[mb]
		size := 0
		for mb+size < m && nt.mbOrigin[mb+size] == o && size < min(nt.cap, groupSize) {
			size++
		}
		groups = append(groups, group{mb, size, o})
		mb += size
	}
	// Hardest origin first: the largest best-case round trip.
	hard := make([]float64, len(groups))
	for i, g := range groups {
		hard[i] = math.Inf(1)
		for _, s := range seqs {
			if p := nt.bestNodes(g.origin, s, st.count, nt.cap, g.size); p != nil {
				hard[i] = min(hard[i], nt.chainTime(p))
			}
		}
	}
	idx := make([]int, len(groups))
	for i := range idx {
		idx[i] = i
	}
	sortStable(len(idx), func(a, b int) bool { return hard[idx[a]] > hard[idx[b]] }, func(a, b int) { idx[a], idx[b] = idx[b], idx[a] })
	var placed [][]int
	// room[s] is what stage s can still take; left the microbatches still
	// to place. A path is only taken if afterwards no stage has more room
	// than there are microbatches left to use it (each visits it at most
	// once), which keeps tight caps fillable.
	room := make([]int, len(nt.parts))
	for s := 1; s < len(room); s++ {
		room[s] = nt.cap * len(nt.parts[s])
	}
	left := m
	demand := m * k
	supply := 0
	for _, r := range room {
		supply += r
	}
	slack := supply - demand
	feasible := func(stages []int, size int) bool {
		after := left - size
		over := 0
		for s := 1; s < len(room); s++ {
			r := room[s]
			for _, t := range stages {
				if t == s {
					r -= size
				}
			}
			if r > after {
				over += r - after
			}
		}
		return over <= slack
	}
	// place finds the best path for size microbatches of origin, or nil.
	place := func(origin, size int) []int {
		// Rank the legal paths by their lone round trip; time only the
		// best few against the plan so far.
		type cand struct {
			path  []int
			chain float64
		}
		var cands []cand
		for _, s := range seqs {
			if !feasible(s, size) {
				continue
			}
			if p := nt.bestNodes(origin, s, st.count, nt.cap, size); p != nil {
				cands = append(cands, cand{p, nt.chainTime(p)})
			}
		}
		sort.SliceStable(cands, func(i, j int) bool { return cands[i].chain < cands[j].chain })
		var bestPath []int
		bestV := math.Inf(1)
		for _, c := range cands[:min(len(cands), timed)] {
			trial := placed
			for range size {
				trial = append(trial, c.path)
			}
			v := ev.run(trial, polCritical, false) + 0.1*ev.meanDone
			*evals++
			if v < bestV {
				bestPath, bestV = c.path, v
			}
		}
		return bestPath
	}
	commit := func(mb int, p []int) {
		st.paths[mb] = append([]int(nil), p...)
		placed = append(placed, p)
		for _, v := range p[1:] {
			st.count[v]++
			room[nt.stageOf[v]]--
		}
		left--
	}
	for _, gi := range idx {
		g := groups[gi]
		if p := place(g.origin, g.size); p != nil {
			for i := range g.size {
				commit(g.first+i, p)
			}
			continue
		}
		// No path has room for the whole group: split it.
		for i := range g.size {
			p := place(g.origin, 1)
			if p == nil {
				return nil
			}
			commit(g.first+i, p)
		}
	}
	// Repair rounds: each group in turn gives up its paths and takes the
	// best one against all the others, kept only if the plan gets faster.
	whole := func() float64 {
		*evals++
		return ev.run(st.paths, polCritical, false) + 0.1*ev.meanDone
	}
	cur := whole()
	for range rounds {
		improved := false
		for _, gi := range idx {
			g := groups[gi]
			old := make([][]int, g.size)
			for i := range g.size {
				old[i] = st.paths[g.first+i]
				for _, v := range old[i][1:] {
					st.count[v]--
					room[nt.stageOf[v]]++
				}
				left++
			}
			placed = placed[:0]
			for mb, p := range st.paths {
				if mb < g.first || mb >= g.first+g.size {
					placed = append(placed, p)
				}
			}
			p := place(g.origin, g.size)
			for i := range g.size {
				next := old[i]
				if p != nil {
					next = p
				}
				commit(g.first+i, next)
			}
			if p == nil {
				continue
			}
			if v := whole(); v < cur-1e-9 {
				cur, improved = v, true
				continue
			}
			for i := range g.size {
				for _, v := range st.paths[g.first+i][1:] {
					st.count[v]--
					room[nt.stageOf[v]]++
				}
				left++
				commit(g.first+i, old[i])
			}
		}
		if !improved {
			break
		}
	}
	return st
}

// repairRounds bounds the group repair passes of the final construction
// (placement refinement, which builds many, skips them).
const repairRounds = 3

// chainTime is one microbatch's time along path with the nodes to itself.
func (nt *spNet) chainTime(path []int) float64 {
	t := 0.0
	for j := 0; j <= 2*len(path); j++ {
		if j > 0 {
			t += nt.hopDelay(taskNode(path, j-1), taskNode(path, j))
		}
		t += nt.taskDur(path, j)
	}
	return t
}

// groupScore is the estimate of the group construction over parts
// (+Inf when it finds no paths), with its evaluation count.
func groupScore(cfg *Config, parts [][]int, seqs [][]int) (float64, int) {
	nt := newNet(cfg, parts)
	ev := newEval(nt)
	n := 0
	g := nt.constructGroups(ev, &n, seqs, refineTimedPaths, nt.cap, 0)
	if g == nil {
		return math.Inf(1), n
	}
	return ev.run(g.paths, polCritical, false) + 0.1*ev.meanDone, n + 1
}

// refinePlacement improves a placement for skipping by hill climbing over
// swaps of two nodes in different stages, scoring each placement by the
// group construction's timing estimate (placement costs alone ignore
// which origins end up far from everything). It spends at most about
// workBudget simple steps and returns the best placement seen.
func refinePlacement(cfg *Config, parts [][]int, seed int64, evals *int) [][]int {
	const workBudget = 1e8
	cur := make([][]int, len(parts))
	for s := range parts {
		cur[s] = append([]int(nil), parts[s]...)
	}
	nt := newNet(cfg, cur)
	k := nt.rules.PathStages - 1
	seqs := nt.stageSeqs(k, maxStageSeqs)
	m := len(nt.mbOrigin)
	groups := (m + nt.cap - 1) / nt.cap
	widest := 0
	for _, p := range cur {
		widest = max(widest, len(p))
	}
	// Per placement: every group ranks every sequence (twice, with the
	// hardness pass) and times the best few.
	perEval := float64(groups) * (2*float64(len(seqs)*k*widest*widest) + float64(min(len(seqs), refineTimedPaths)*m*m*(2*k+3)))
	steps := min(int(workBudget/max(perEval, 1)), 800)
	if steps < 20 {
		return cur
	}
	curV, n := groupScore(cfg, cur, seqs)
	*evals += n
	rng := newRand(seed, 0x9e11)
	ns := len(cur)
	for range steps {
		a, b := rng.IntN(ns), rng.IntN(ns)
		if a == b {
			continue
		}
		i, j := rng.IntN(len(cur[a])), rng.IntN(len(cur[b]))
		cur[a][i], cur[b][j] = cur[b][j], cur[a][i]
		v, n := groupScore(cfg, cur, seqs)
		*evals += n
		if v <= curV {
			curV = v
			continue
		}
		cur[a][i], cur[b][j] = cur[b][j], cur[a][i]
	}
	for _, p := range cur {
		sortInts(p)
	}
	return cur
}
