package scheduler

import (
	"cmp"
	"container/heap"
	"fmt"
)

// greedyConfig drives greedySchedule, the list scheduler behind
// interleaved-zb and the V-shape schedules: p ranks holding v chunks each
// (placed by place), m microbatches, integer costs per chunk action, and
// free communication.
type greedyConfig struct {
	p, v, m int
	place   placement
	// split runs the backward as I then W (zero bubble); otherwise as one B.
	split bool
	// fCost, bCost, wCost price a chunk's forward, its backward (the I
	// when split) and its W.
	fCost, bCost, wCost int64
	// pairCost, when > 0, lets a rank that has both a forward and a
	// backward ready run them as one Overlapped action of this cost
	// (DualPipe's overlapped chunk pair).
	pairCost int64
	// memory caps the chunk activations a rank holds (see greedySchedule);
	// memory[r] for rank r, 0 for no cap.
	memory []int
	// forwardFirst prefers an allowed forward to a ready backward while
	// the rank holds fewer than forwardFirst activations (a 1F1B-like
	// warm-up); 0 always prefers the backward.
	forwardFirst int
	// open[r], when set, caps the microbatches rank r has started (first
	// chunk's forward run) and not yet finished (first chunk's backward
	// run): a pace like 1F1B's warm-up, set per rank.
	open []int
	// noReserve lets a first chunk's forward take the last free slot (the
	// run may then stall, and greedyPlan drops it).
	noReserve bool
	// wAt runs a pending W before a forward once the rank holds wAt or
	// more activations (freeing memory early); 0 leaves W to the bubbles.
	wAt int
}

// greedySchedule runs one iteration at the configured costs and records
// what every rank did. An idle rank, in this order of preference:
//
//  1. runs a ready backward (B or I): the oldest microbatch first, the
//     later chunk on a tie; with pairing on and a forward also ready and
//     allowed, both as one overlapped action;
//  2. runs a ready forward the memory cap allows, the latest chunk first
//     (it finishes a microbatch sooner and adds no new one);
//  3. runs the oldest pending W (which frees an activation);
//  4. waits.
//
// Forwards and backwards of a chunk run in ascending microbatch order (the
// model's exactness contract wants backwards and losses in that order).
// The memory cap counts chunk activations held, from forward to the
// backward (or W) that frees them; a first chunk's forward runs only with
// room left for the microbatch's other chunks (unless noReserve). A run
// that stalls anyway returns an error, and greedyPlan keeps another
// variant. Every action starts after its inputs exist, so the recorded
// programs are deadlock free under any timing (the argument of
// listSchedule).
func greedySchedule(c greedyConfig) ([][]Action, int64, error) {
	p, v, m := c.p, c.v, c.m
	ns := p * v
	prog := newLSProgress(m, ns)
	type rstate struct {
		fNext, bNext []int // per chunk: next microbatch to run
		wq           []Action
		busy         bool
		cur          Action
		inflight     int
	}
	st := make([]rstate, p)
	out := make([][]Action, p)
	remaining := 0
	for r := range st {
		st[r].fNext = make([]int, v)
		st[r].bNext = make([]int, v)
		n := 2 * m * v
		if c.split {
			n += m * v
		}
		out[r] = make([]Action, 0, n)
		remaining += n
	}
	stageOf := func(r, chunk int) int { return c.place.stage(r, chunk, p) }
	fReady := func(r, chunk int) bool {
		mb := st[r].fNext[chunk]
		if mb >= m {
			return false
		}
		return prog.forwardReady(mb, stageOf(r, chunk))
	}
	bReady := func(r, chunk int) bool {
		mb := st[r].bNext[chunk]
		if mb >= m {
			return false
		}
		return prog.backwardReady(mb, stageOf(r, chunk))
	}
	fAllowed := func(r, chunk int) bool {
		capacity := 0
		if r < len(c.memory) {
			capacity = c.memory[r]
		}
		if capacity == 0 {
			return true
		}
		s := &st[r]
		if chunk == 0 && r < len(c.open) && s.fNext[0]-s.bNext[0] >= c.open[r] {
			return false
		}
		if chunk == 0 && !c.noReserve {
			return s.inflight+v <= capacity
		}
		return s.inflight+1 <= capacity
	}
	pickB := func(r int) int {
		best := -1
		for ch := v - 1; ch >= 0; ch-- {
			if bReady(r, ch) && (best < 0 || st[r].bNext[ch] < st[r].bNext[best]) {
				best = ch
			}
		}
		return best
	}
	pickF := func(r int) int {
		for ch := v - 1; ch >= 0; ch-- {
			if fReady(r, ch) && fAllowed(r, ch) {
				return ch
			}
		}
		return -1
	}
	var h lsHeap
	var now int64
	takeF := func(r, ch int) Action {
		s := &st[r]
		mb := s.fNext[ch]
		s.fNext[ch]++
		return F(mb, ch)
	}
	takeB := func(r, ch int) Action {
		s := &st[r]
		mb := s.bNext[ch]
		s.bNext[ch]++
		if c.split {
			return I(mb, ch)
		}
		return B(mb, ch)
	}
	start := func(r int) {
		s := &st[r]
		if s.busy {
			return
		}
		var a Action
		var cost int64
		wEarly := c.wAt > 0 && s.inflight >= c.wAt && len(s.wq) > 0
		fFirst := -1
		if s.inflight < c.forwardFirst && !wEarly {
			fFirst = pickF(r)
		}
		if fFirst >= 0 {
			a, cost = takeF(r, fFirst), c.fCost
		} else if b := pickB(r); b >= 0 {
			f := -1
			if c.pairCost > 0 {
				f = pickF(r)
			}
			if f >= 0 && st[r].fNext[f] != st[r].bNext[b] {
				fa := takeF(r, f)
				a, cost = FB(fa.Microbatch, fa.Stage, takeB(r, b)), c.pairCost
				remaining--
			} else {
				a, cost = takeB(r, b), c.bCost
			}
		} else if f := pickF(r); f >= 0 && !wEarly {
			a, cost = takeF(r, f), c.fCost
		} else if len(s.wq) > 0 {
			a, cost = s.wq[0], c.wCost
			s.wq = s.wq[1:]
		} else {
			return
		}
		s.busy, s.cur = true, a
		out[r] = append(out[r], a)
		heap.Push(&h, lsEvent{now + cost, r})
	}
	finishHalf := func(r int, a Action) {
		s := &st[r]
		prog.finish(a, stageOf(r, a.Stage), &s.inflight, &s.wq)
	}
	for r := range p {
		start(r)
	}
	for h.Len() > 0 {
		now = h[0].t
		for h.Len() > 0 && h[0].t == now {
			r := heap.Pop(&h).(lsEvent).rank
			s := &st[r]
			s.busy = false
			remaining--
			f, b, pair := s.cur.Halves()
			finishHalf(r, f)
			if pair {
				finishHalf(r, b)
			}
		}
		for r := range p {
			start(r)
		}
	}
	if remaining != 0 {
		return nil, 0, fmt.Errorf("greedy schedule stalled at time %d with %d actions left (memory cap too small?)", now, remaining)
	}
	return out, now, nil
}

// greedyPlan builds a plan whose rank programs come from greedySchedule,
// one run per distinct local microbatch count (replicas split m into
// blocks that differ by at most one).
//
// cfg lists candidate policies; the one with the shortest iteration at
// unit costs wins (the first on a tie), so the plan stays a pure function
// of the Spec.
func greedyPlan(s Spec, name string, defaultChunks int, pl placement, cfg func(p, v, m int) []greedyConfig) (*Plan, error) {
	n := s
	if err := n.normalise(defaultChunks); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if n.Memory > 0 && n.Memory < n.Chunks {
		return nil, fmt.Errorf("%s: memory is %d, fewer than the %d chunk activations a microbatch holds on a worker", name, n.Memory, n.Chunks)
	}
	orders := map[int][][]Action{}
	for _, local := range []int{n.Microbatches / n.Replicas, n.Microbatches/n.Replicas + 1} {
		if local < 1 {
			continue
		}
		var best [][]Action
		var bestT int64
		var firstErr error
		for _, c := range cfg(n.Stages, n.Chunks, local) {
			c.p, c.v, c.m, c.place = n.Stages, n.Chunks, local, pl
			if n.Memory > 0 {
				// The workers' own memory caps the schedule too.
				c.memory = append([]int(nil), c.memory...)
				for r := range c.memory {
					if c.memory[r] == 0 || c.memory[r] > n.Memory {
						c.memory[r] = n.Memory
					}
				}
			}
			o, t, err := greedySchedule(c)
			if err != nil {
				firstErr = cmp.Or(firstErr, err)
				continue
			}
			if best == nil || t < bestT {
				best, bestT = o, t
			}
		}
		if best == nil {
			return nil, fmt.Errorf("%s: %w", name, firstErr)
		}
		orders[local] = best
	}
	return classicPlanAt(s, name, defaultChunks, pl, func(rank, p, v, m int) []Action {
		if o, ok := orders[m]; ok {
			return o[rank]
		}
		return nil // a replica with no microbatch (m < replicas)
	})
}
