package scheduler

import (
	"container/heap"
	"fmt"
)

// Zero-bubble schedules (Qi et al., "Zero Bubble Pipeline Parallelism",
// ICLR 2024) split each backward into BackwardInput (I: the gradient with
// respect to the stage's input, which the previous stage waits for) and
// BackwardWeight (W: the gradient with respect to the stage's weights,
// which nobody waits for). W can then be moved into the bubbles. In the
// Machine a W, when present, is what frees the microbatch's activations.
//
// With forward, I and W each taking one unit and free communication, no
// schedule can beat 3m+p-1 from an empty pipeline: the last rank cannot
// start before p-1 units have passed and has 3m units of work. Both
// schedules below reach it whenever m >= p. With m < p they take
// 2(p+m)-1, bounded by the round trip of the last microbatch; the tests in
// papers_test.go pin both values over a grid.
//
//   - zb-h1 keeps 1F1B's memory: rank r runs p-r-1 warm-up forwards, then
//     for every microbatch j one forward (of j+p-r-1), I(j), and W(j-r):
//     rank r defers its weight gradients by r microbatches, so they fill
//     the cool-down bubble at the end. Every rank holds at most p
//     microbatches' activations (stage 0: min(m, p)).
//   - zb-h2 allows 2p-1 in flight: rank r runs 2(p-r)-1 warm-up forwards,
//     which fill the start-up bubble too; the rest of the order comes from
//     a list-scheduling run at unit costs that prefers I, then F (while
//     fewer than 2p-1 activations are held), then W. Alone it also takes
//     3m+p-1; its point is that iterations overlapped without a barrier
//     (the simulator's multi-iteration mode) leave no bubble.
//
// Both take one chunk per worker (Spec.Chunks 0 or 1).

func init() {
	Register("zb-h1", func(s Spec) (*Plan, error) {
		if s.Chunks > 1 {
			return nil, fmt.Errorf("zb-h1: chunks is %d, the schedule holds one stage per worker", s.Chunks)
		}
		return classicPlan(s, "zb-h1", 1, zbH1Order)
	})
	Register("zb-h2", func(s Spec) (*Plan, error) {
		if s.Chunks > 1 {
			return nil, fmt.Errorf("zb-h2: chunks is %d, the schedule holds one stage per worker", s.Chunks)
		}
		n := s
		if err := n.normalise(1); err != nil {
			return nil, fmt.Errorf("zb-h2: %w", err)
		}
		// Replicas carry m/nr or m/nr+1 microbatches each.
		orders := map[int][][]Action{}
		for _, local := range []int{n.Microbatches / n.Replicas, n.Microbatches/n.Replicas + 1} {
			if local < 1 {
				continue
			}
			o, err := zbH2Orders(n.Stages, local)
			if err != nil {
				return nil, fmt.Errorf("zb-h2: %w", err)
			}
			orders[local] = o
		}
		return classicPlan(s, "zb-h2", 1, func(rank, p, v, m int) []Action {
			if o, ok := orders[m]; ok {
				return o[rank]
			}
			return nil // a replica with no microbatch (m < replicas)
		})
	})
}

// zbH1Order is ZB-H1 on rank r: p-r-1 warm-up forwards, then per
// microbatch j a forward, I(j) and W(j-r), then the r deferred W.
func zbH1Order(rank, p, v, m int) []Action {
	warm := min(m, p-rank-1)
	out := make([]Action, 0, 3*m)
	for j := range warm {
		out = append(out, F(j, 0))
	}
	w := 0
	for j := range m {
		if j+warm < m {
			out = append(out, F(j+warm, 0))
		}
		out = append(out, I(j, 0))
		if j >= rank {
			out = append(out, W(w, 0))
			w++
		}
	}
	for ; w < m; w++ {
		out = append(out, W(w, 0))
	}
	return out
}

// zbH2Orders runs the ZB-H2 list schedule for p ranks and m microbatches.
func zbH2Orders(p, m int) ([][]Action, error) {
	ranks := make([]lsRank, p)
	for r := range ranks {
		for j := range m {
			ranks[r].fwd = append(ranks[r].fwd, F(j, 0))
			ranks[r].bwd = append(ranks[r].bwd, I(j, 0))
		}
	}
	limit := 2*p - 1
	pol := func(v lsView) lsChoice {
		if v.fNext < min(v.fTotal, 2*(p-v.rank)-1) {
			switch {
			case v.fReady:
				return lsF
			case v.wPending > 0:
				return lsW
			}
			return lsWait
		}
		switch {
		case v.bReady:
			return lsB
		case v.fNext < v.fTotal && v.fReady && v.inflight < limit:
			return lsF
		case v.wPending > 0:
			return lsW
		}
		return lsWait
	}
	return listSchedule(p, 1, ranks, true, 1, 1, 1, pol)
}

// List scheduling: run per-rank queues of actions at unit costs, letting a
// policy pick what an idle rank does next, and record the order.

// lsProgress is what a list schedule knows of the work done so far: which
// forwards and backwards (B or I) have finished, by (microbatch, stage)
// cell, for ns stages in model order. listSchedule and greedySchedule
// share it, so both define readiness alike.
type lsProgress struct {
	ns           int
	fDone, bDone []bool
}

func newLSProgress(m, ns int) *lsProgress {
	return &lsProgress{ns: ns, fDone: make([]bool, m*ns), bDone: make([]bool, m*ns)}
}

// forwardReady: the forward of microbatch mb on stage s has its input.
func (p *lsProgress) forwardReady(mb, s int) bool {
	return s == 0 || p.fDone[mb*p.ns+s-1]
}

// backwardReady: the backward of mb on stage s has its output gradient
// (on the last stage, its own forward's output).
func (p *lsProgress) backwardReady(mb, s int) bool {
	if s == p.ns-1 {
		return p.fDone[mb*p.ns+s]
	}
	return p.bDone[mb*p.ns+s+1]
}

// finish records a (F, B, I or W) finished on stage s by a rank holding
// inflight activations and the weight gradients wq still to run.
func (p *lsProgress) finish(a Action, s int, inflight *int, wq *[]Action) {
	cell := a.Microbatch*p.ns + s
	switch a.Kind {
	case Forward:
		p.fDone[cell] = true
		*inflight++
	case Backward:
		p.bDone[cell] = true
		*inflight--
	case BackwardInput:
		p.bDone[cell] = true
		*wq = append(*wq, W(a.Microbatch, a.Stage))
	case BackwardWeight:
		*inflight--
	}
}

// lsChoice is what an idle rank decides to do.
type lsChoice uint8

const (
	lsWait lsChoice = iota // nothing now; ask again when something finishes
	lsF                    // the next forward of the queue
	lsB                    // the next backward (B, or I when split)
	lsW                    // the oldest weight gradient not yet run
)

// lsView is what a policy sees of one idle rank.
type lsView struct {
	rank     int
	fNext    int  // forwards run so far
	fTotal   int  // forwards in the queue
	fReady   bool // the next forward's input exists
	bReady   bool // the next backward's input exists
	wPending int  // input gradients whose W has not run
	inflight int  // activations held: forwards not yet freed
}

type lsPolicy func(v lsView) lsChoice

// lsRank holds one rank's forwards and backwards in queue order, with the
// chunk index (not the stage) in Stage.
type lsRank struct {
	fwd, bwd []Action
}

type lsEvent struct {
	t    int64
	rank int
}

type lsHeap []lsEvent

func (h lsHeap) Len() int { return len(h) }
func (h lsHeap) Less(i, j int) bool {
	if h[i].t != h[j].t {
		return h[i].t < h[j].t
	}
	return h[i].rank < h[j].rank
}
func (h lsHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *lsHeap) Push(x any)   { *h = append(*h, x.(lsEvent)) }
func (h *lsHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	*h = old[:len(old)-1]
	return e
}

// listSchedule runs the queues of p ranks holding v chunks each (stage =
// chunk*p + rank; ranks[r].fwd lists v*m forwards) with integer costs —
// forward fCost, backward bCost (the I's cost when split), wCost for W —
// and free communication, and returns the order each rank ran. Every
// action in that order started after its inputs existed, so the programs
// are deadlock free under any timing: were some set of workers stuck, the
// stuck action that started first in the recorded run would be waiting
// on an action that started even earlier and is stuck too.
func listSchedule(p, v int, ranks []lsRank, split bool, fCost, bCost, wCost int64, pol lsPolicy) ([][]Action, error) {
	ns := p * v
	m := 0
	if len(ranks) > 0 {
		m = len(ranks[0].fwd) / v
	}
	prog := newLSProgress(m, ns)
	out := make([][]Action, p)
	type rstate struct {
		fi, bi   int
		wq       []Action
		busy     bool
		cur      Action
		inflight int
	}
	st := make([]rstate, p)
	stageOf := func(r int, a Action) int { return a.Stage*p + r }
	ready := func(r int, a Action) bool {
		if a.Kind == Forward {
			return prog.forwardReady(a.Microbatch, stageOf(r, a))
		}
		return prog.backwardReady(a.Microbatch, stageOf(r, a))
	}
	remaining := 0
	for r := range ranks {
		n := len(ranks[r].fwd) + len(ranks[r].bwd)
		if split {
			n += len(ranks[r].bwd)
		}
		out[r] = make([]Action, 0, n)
		remaining += n
	}
	var h lsHeap
	var now int64
	start := func(r int) {
		s, rk := &st[r], &ranks[r]
		if s.busy {
			return
		}
		v := lsView{rank: r, fNext: s.fi, fTotal: len(rk.fwd), wPending: len(s.wq), inflight: s.inflight}
		if s.fi < len(rk.fwd) {
			v.fReady = ready(r, rk.fwd[s.fi])
		}
		if s.bi < len(rk.bwd) {
			v.bReady = ready(r, rk.bwd[s.bi])
		}
		var a Action
		var c int64
		switch pol(v) {
		case lsF:
			if !v.fReady {
				return
			}
			a, c = rk.fwd[s.fi], fCost
			s.fi++
		case lsB:
			if !v.bReady {
				return
			}
			a, c = rk.bwd[s.bi], bCost
			s.bi++
		case lsW:
			if len(s.wq) == 0 {
				return
			}
			a, c = s.wq[0], wCost
			s.wq = s.wq[1:]
		default:
			return
		}
		s.busy, s.cur = true, a
		out[r] = append(out[r], a)
		heap.Push(&h, lsEvent{now + c, r})
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
			prog.finish(s.cur, stageOf(r, s.cur), &s.inflight, &s.wq)
		}
		for r := range p {
			start(r)
		}
	}
	if remaining != 0 {
		return nil, fmt.Errorf("list schedule stalled at time %d with %d actions left", now, remaining)
	}
	return out, nil
}
