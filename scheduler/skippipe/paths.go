package skippipe

import (
	"fmt"
	"math/rand/v2"
)

// spState is a set of microbatch paths (node per hop, origin first) with
// the number of paths through every node, kept within the caps by every
// move.
type spState struct {
	paths [][]int
	count []int
}

func (st *spState) clone() *spState {
	c := &spState{paths: make([][]int, len(st.paths)), count: append([]int(nil), st.count...)}
	for i, p := range st.paths {
		c.paths[i] = append([]int(nil), p...)
	}
	return c
}

// validSeq reports whether the stages of a path obey the rules: stage 0
// first and only there, each stage once, swaps back by at most
// SwapDistance and at most MaxSwaps of them, forward jumps of at most
// MaxJump.
func (nt *spNet) validSeq(path []int) bool {
	return nt.validOrder(len(path)-1, func(i int) int { return nt.stageOf[path[i+1]] })
}

// validStages is validSeq over stage numbers (without the origin).
func (nt *spNet) validStages(stages []int) bool {
	return nt.validOrder(len(stages), func(i int) int { return stages[i] })
}

// validOrder checks the rules of validSeq on the n stages after the
// origin, the ith being stage(i).
func (nt *spNet) validOrder(n int, stage func(i int) int) bool {
	r := &nt.rules
	furthest, swaps, prev := 0, 0, 0
	for i := 0; i < n; i++ {
		s := stage(i)
		if s == 0 {
			return false
		}
		for k := 0; k < i; k++ {
			if stage(k) == s {
				return false
			}
		}
		if s < furthest {
			swaps++
			if furthest-s > r.SwapDistance || swaps > r.MaxSwaps {
				return false
			}
		}
		if s-prev > r.MaxJump {
			return false
		}
		furthest = max(furthest, s)
		prev = s
	}
	return true
}

// pickStages chooses k distinct non-first stages in ascending order, each
// with room left, consecutive ones (and the first from stage 0) at most
// MaxJump apart, maximising the summed score. Ties go to lower stages.
func (nt *spNet) pickStages(k int, score func(s int) float64, room func(s int) bool) ([]int, bool) {
	ns := len(nt.parts)
	const none = -1e300
	// dp[c][s]: best score of c chosen stages ending at s.
	dp := make([][]float64, k+1)
	from := make([][]int, k+1)
	for c := range dp {
		dp[c] = make([]float64, ns)
		from[c] = make([]int, ns)
		for s := range dp[c] {
			dp[c][s] = none
			from[c][s] = -1
		}
	}
	dp[0][0] = 0
	for c := 1; c <= k; c++ {
		for s := 1; s < ns; s++ {
			if !room(s) {
				continue
			}
			for p := max(0, s-nt.rules.MaxJump); p < s; p++ {
				if dp[c-1][p] == none || (p == 0 && c > 1) {
					continue
				}
				if v := dp[c-1][p] + score(s); v > dp[c][s] {
					dp[c][s], from[c][s] = v, p
				}
			}
		}
	}
	end := -1
	for s := 1; s < ns; s++ {
		if dp[k][s] != none && (end < 0 || dp[k][s] > dp[k][end]) {
			end = s
		}
	}
	if end < 0 {
		return nil, false
	}
	out := make([]int, k)
	for c, s := k, end; c >= 1; c-- {
		out[c-1] = s
		s = from[c][s]
	}
	return out, true
}

// construct builds a first set of paths. Deterministic mode balances the
// stages by remaining room and picks, hop by hop, the node with room
// nearest (both ways) to the previous hop, counting its compute; with rng
// set, stage scores are perturbed and nodes drawn at random among those
// with room: network-oblivious paths that still respect every rule.
//
// With grouped set, each origin's microbatches are taken together and
// follow the same stages while they have room (the authors' agents), which
// the nearest-node rule then tends to keep on the same nodes.
func (nt *spNet) construct(rng *rand.Rand, pathStages int, perNodeCap int, grouped bool) (*spState, error) {
	ns := len(nt.parts)
	m := len(nt.mbOrigin)
	st := &spState{paths: make([][]int, m), count: make([]int, len(nt.names))}
	stageLeft := make([]int, ns)
	for s := 1; s < ns; s++ {
		stageLeft[s] = perNodeCap * len(nt.parts[s])
	}
	// Interleave origins so that every origin gets a fair pick of stages.
	order := make([]int, 0, m)
	per := m / len(nt.origins)
	for i := range per {
		for o := range nt.origins {
			order = append(order, o*per+i)
		}
	}
	if grouped {
		for i := range order {
			order[i] = i
		}
	}
	var last []int
	for _, mb := range order {
		if grouped && last != nil && nt.mbOrigin[mb] == nt.mbOrigin[mb-1] {
			ok := true
			for _, s := range last {
				ok = ok && stageLeft[s] > 0
			}
			if ok {
				stages := append([]int(nil), last...)
				st.paths[mb] = nt.placeHops(st, mb, stages, stageLeft, perNodeCap, nil)
				continue
			}
		}
		score := func(s int) float64 { return float64(stageLeft[s]) }
		if rng != nil {
			score = func(s int) float64 { return float64(stageLeft[s]) * (0.5 + rng.Float64()) }
		}
		stages, ok := nt.pickStages(pathStages-1, score, func(s int) bool { return stageLeft[s] > 0 })
		if !ok {
			return nil, fmt.Errorf("skippipe: no stage sequence left for microbatch %d within the caps and jump limit", mb)
		}
		if rng != nil {
			// Random order among the legal ones: random adjacent swaps.
			for range 2 * len(stages) {
				i := rng.IntN(len(stages))
				if i+1 < len(stages) {
					stages[i], stages[i+1] = stages[i+1], stages[i]
					if !nt.validStages(stages) {
						stages[i], stages[i+1] = stages[i+1], stages[i]
					}
				}
			}
		}
		last = append(last[:0], stages...)
		st.paths[mb] = nt.placeHops(st, mb, stages, stageLeft, perNodeCap, rng)
	}
	return st, nil
}

// placeHops picks a node with room for every stage of a path.
func (nt *spNet) placeHops(st *spState, mb int, stages []int, stageLeft []int, perNodeCap int, rng *rand.Rand) []int {
	path := make([]int, 0, len(stages)+1)
	path = append(path, nt.mbOrigin[mb])
	{
		for _, s := range stages {
			prev := path[len(path)-1]
			best := -1
			bestCost := 0.0
			nFree := 0
			for _, v := range nt.parts[s] {
				if st.count[v] < perNodeCap {
					nFree++
				}
			}
			draw := 0
			if rng != nil {
				draw = rng.IntN(nFree)
			}
			for _, v := range nt.parts[s] {
				if st.count[v] >= perNodeCap {
					continue
				}
				if rng != nil {
					if draw == 0 {
						best = v
						break
					}
					draw--
					continue
				}
				c := nt.hopDelay(prev, v) + nt.hopDelay(v, prev) + (1+nt.bwdRatio)*nt.fwd[v]
				if best < 0 || c < bestCost {
					best, bestCost = v, c
				}
			}
			st.count[best]++
			stageLeft[s]--
			path = append(path, best)
		}
	}
	return path
}

// spMove is one undoable change to a state.
type spMove struct {
	a, b       int // microbatches changed (b = -1 if one)
	oldA, oldB []int
	countFrom  int // node whose count fell (-1 if none)
	countTo    int
}

func (st *spState) undo(mv *spMove) {
	copy(st.paths[mv.a], mv.oldA)
	if mv.b >= 0 {
		copy(st.paths[mv.b], mv.oldB)
	}
	if mv.countFrom >= 0 {
		st.count[mv.countFrom]++
		st.count[mv.countTo]--
	}
}

// mutate applies one random move that keeps every rule and cap, or
// reports false when the drawn move was not legal.
func (nt *spNet) mutate(st *spState, rng *rand.Rand, perNodeCap int, mv *spMove) bool {
	m := len(st.paths)
	a := rng.IntN(m)
	pa := st.paths[a]
	k := len(pa)
	if k < 2 {
		return false
	}
	mv.a, mv.b, mv.countFrom = a, -1, -1
	mv.oldA = append(mv.oldA[:0], pa...)
	switch rng.IntN(4) {
	case 0: // move a hop to another node of its stage, or trade with one
		i := 1 + rng.IntN(k-1)
		x := pa[i]
		part := nt.parts[nt.stageOf[x]]
		if len(part) < 2 {
			return false
		}
		y := part[rng.IntN(len(part))]
		if y == x {
			return false
		}
		if st.count[y] < perNodeCap {
			pa[i] = y
			st.count[x]--
			st.count[y]++
			mv.countFrom, mv.countTo = x, y
			return true
		}
		// Trade with a microbatch that uses y for the same stage.
		start := rng.IntN(m)
		for d := range m {
			b := (start + d) % m
			if b == a {
				continue
			}
			pb := st.paths[b]
			for h := 1; h < len(pb); h++ {
				if pb[h] == y {
					mv.b = b
					mv.oldB = append(mv.oldB[:0], pb...)
					pb[h] = x
					pa[i] = y
					return true
				}
			}
		}
		return false
	case 1: // swap two adjacent hops (a swap in the paper's sense, or undo one)
		if k < 3 {
			return false
		}
		i := 1 + rng.IntN(k-2)
		pa[i], pa[i+1] = pa[i+1], pa[i]
		return nt.validSeq(pa)
	case 2: // exchange one visited stage with another microbatch
		b := rng.IntN(m)
		if b == a {
			return false
		}
		pb := st.paths[b]
		i, j := 1+rng.IntN(k-1), 1+rng.IntN(len(pb)-1)
		si, sj := nt.stageOf[pa[i]], nt.stageOf[pb[j]]
		if si == sj || visits(nt, pa, sj) || visits(nt, pb, si) {
			return false
		}
		mv.b = b
		mv.oldB = append(mv.oldB[:0], pb...)
		pa[i], pb[j] = pb[j], pa[i]
		if !nt.validSeq(pa) {
			nt.sortByStage(pa)
		}
		if !nt.validSeq(pb) {
			nt.sortByStage(pb)
		}
		return nt.validSeq(pa) && nt.validSeq(pb)
	default: // give two microbatches of different origins each other's tails
		b := rng.IntN(m)
		pb := st.paths[b]
		if pa[0] == pb[0] || len(pb) != k {
			return false
		}
		mv.b = b
		mv.oldB = append(mv.oldB[:0], pb...)
		for h := 1; h < k; h++ {
			pa[h], pb[h] = pb[h], pa[h]
		}
		return true
	}
}

func visits(nt *spNet, path []int, stage int) bool {
	for _, v := range path[1:] {
		if nt.stageOf[v] == stage {
			return true
		}
	}
	return false
}

// sortByStage puts a path's hops after the origin in stage order.
func (nt *spNet) sortByStage(path []int) {
	h := path[1:]
	sortStable(len(h), func(i, j int) bool { return nt.stageOf[h[i]] < nt.stageOf[h[j]] }, func(i, j int) { h[i], h[j] = h[j], h[i] })
}
