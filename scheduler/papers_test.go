package scheduler

import (
	"container/heap"
	"fmt"
	"testing"
)

// unitResult is what unitRun measures. Times are in ticks: one tick is a
// chunk's forward, so a full stage's forward is v ticks (v = chunks per
// worker) and a stage-time unit is v ticks.
type unitResult struct {
	ticks int64   // makespan
	busy  []int64 // busy ticks per worker
	peak  []int   // most activations held at once, per worker
	v     int
}

// makespan is the iteration time in stage-time units.
func (r unitResult) makespan() float64 { return float64(r.ticks) / float64(r.v) }

// bubbleFraction is idle worker time over workers x iteration time.
func (r unitResult) bubbleFraction() float64 {
	var idle int64
	for _, b := range r.busy {
		idle += r.ticks - b
	}
	return float64(idle) / float64(int64(len(r.busy))*r.ticks)
}

// unitCost prices an action in ticks: forward 1, full backward 2 (3 with
// recomputation), input and weight gradients 1 each, loss, all-reduce and
// optimizer step free. Communication is free too.
//
// An overlapped pair costs the longer of its halves (full overlap).
func unitCost(plan *Plan, a Action) int64 {
	if f, b, ok := a.Halves(); ok {
		return max(unitCost(plan, f), unitCost(plan, b))
	}
	switch a.Kind {
	case Forward, BackwardInput, BackwardWeight:
		if a.Kind == BackwardInput && plan.Recompute {
			return 2
		}
		return 1
	case Backward:
		if plan.Recompute {
			return 3
		}
		return 2
	}
	return 0
}

type unitEvent struct {
	t      int64
	seq    int64
	worker int
}

type unitHeap []unitEvent

func (h unitHeap) Len() int { return len(h) }
func (h unitHeap) Less(i, j int) bool {
	if h[i].t != h[j].t {
		return h[i].t < h[j].t
	}
	return h[i].seq < h[j].seq
}
func (h unitHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *unitHeap) Push(x any)   { *h = append(*h, x.(unitEvent)) }
func (h *unitHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	*h = old[:len(old)-1]
	return e
}

// unitRun executes plan with the package's Machine under unitCost, event
// by event (the real simulator lives in package sim; this is the small
// independent clock the formula tests need). All-reduces are barriers
// among a stage's replicas. It fails if the plan deadlocks.
func unitRun(t testing.TB, plan *Plan) unitResult {
	t.Helper()
	r, err := unitExec(plan)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func unitExec(plan *Plan) (unitResult, error) {
	ix := NewIndex(plan)
	nw := len(plan.Workers)
	ms := make([]*Machine, nw)
	for w := range ms {
		ms[w] = NewMachine(ix, w)
	}
	res := unitResult{busy: make([]int64, nw), peak: make([]int, nw), v: len(plan.Workers[0].Stages)}
	sw := plan.StageWorkers()
	atBarrier := make([]int, len(plan.Stages))
	var h unitHeap
	var seq int64
	running := make([]bool, nw)
	var now int64
	var try func(w int) error
	finish := func(w int) error {
		running[w] = false
		for _, msg := range ms[w].Finish() {
			if err := ms[msg.To].Deliver(msg); err != nil {
				return err
			}
			if !running[msg.To] {
				if err := try(msg.To); err != nil {
					return err
				}
			}
		}
		if ms[w].InFlight() > res.peak[w] {
			res.peak[w] = ms[w].InFlight()
		}
		return try(w)
	}
	try = func(w int) error {
		if running[w] {
			return nil
		}
		a, ok := ms[w].Start()
		if !ok {
			return nil
		}
		running[w] = true
		if a.Kind == AllReduce && len(sw[a.Stage]) > 1 {
			atBarrier[a.Stage]++
			if atBarrier[a.Stage] < len(sw[a.Stage]) {
				return nil
			}
			atBarrier[a.Stage] = 0
			for _, r := range sw[a.Stage] {
				seq++
				heap.Push(&h, unitEvent{now, seq, r})
			}
			return nil
		}
		c := unitCost(plan, a)
		res.busy[w] += c
		seq++
		heap.Push(&h, unitEvent{now + c, seq, w})
		return nil
	}
	for w := range ms {
		if err := try(w); err != nil {
			return res, err
		}
	}
	for h.Len() > 0 {
		e := heap.Pop(&h).(unitEvent)
		now = e.t
		if err := finish(e.worker); err != nil {
			return res, err
		}
	}
	for w, m := range ms {
		if !m.Done() {
			a, _ := m.current()
			return res, fmt.Errorf("worker %d stuck at %s", w, a)
		}
	}
	res.ticks = now
	return res, nil
}

// Tests tied to the papers' formulas (DESIGN section 4). Costs are the
// papers' idealisation: equal stages, forward 1 and backward 2 per full
// stage (a chunk of an interleaved rank costs 1/v and 2/v), input and
// weight gradients 1 each for zero-bubble schedules, free communication.
// Each comment paraphrases the sentence of the paper the test checks.

func near(a, b float64) bool { d := a - b; return d < 1e-9 && d > -1e-9 }

func mustGenerate(t testing.TB, name string, s Spec) *Plan {
	t.Helper()
	plan, err := Generate(name, s)
	if err != nil {
		t.Fatalf("%s %+v: %v", name, s, err)
	}
	if err := Validate(plan); err != nil {
		t.Fatalf("%s %+v: %v", name, s, err)
	}
	return plan
}

// GPipe (Huang et al., 2019, section 2.3): with K partitions and M
// micro-batches the bubble costs (K-1)/(M+K-1) of the time, amortised
// over the micro-steps. PipeDream-Flush / 1F1B (Narayanan et al., 2021)
// reorders the same work without changing the flush, so its bubble is
// the same. Megatron-LM (Narayanan et al., SC'21, section 2.2.1) states
// the same bubble as (p-1)/m of the ideal time, i.e. an iteration of
// 3(m+p-1) with backward twice the forward.
func TestPaperGPipeAnd1F1BBubble(t *testing.T) {
	for _, name := range []string{"gpipe", "1f1b"} {
		for p := 1; p <= 16; p++ {
			for m := 1; m <= 64; m++ {
				r := unitRun(t, mustGenerate(t, name, Spec{Stages: p, Microbatches: m}))
				if want := float64(p-1) / float64(m+p-1); !near(r.bubbleFraction(), want) {
					t.Fatalf("%s p=%d m=%d: bubble fraction %.12f, want (p-1)/(m+p-1) = %.12f", name, p, m, r.bubbleFraction(), want)
				}
				if want := 3 * float64(m+p-1); !near(r.makespan(), want) {
					t.Fatalf("%s p=%d m=%d: iteration %v, want 3(m+p-1) = %v", name, p, m, r.makespan(), want)
				}
				if over, want := (r.makespan()-3*float64(m))/(3*float64(m)), float64(p-1)/float64(m); !near(over, want) {
					t.Fatalf("%s p=%d m=%d: bubble over ideal %v, want (p-1)/m = %v", name, p, m, over, want)
				}
			}
		}
	}
}

// GPipe (section 2.3): with re-materialisation each backward first
// recomputes its forward, so a stage's backward costs a forward more:
// 4(m+p-1) in our units (DESIGN section 4).
func TestPaperGPipeRecompute(t *testing.T) {
	for p := 1; p <= 8; p++ {
		for m := 1; m <= 16; m++ {
			r := unitRun(t, mustGenerate(t, "gpipe-recompute", Spec{Stages: p, Microbatches: m}))
			if want := 4 * float64(m+p-1); !near(r.makespan(), want) {
				t.Fatalf("p=%d m=%d: %v, want 4(m+p-1) = %v", p, m, r.makespan(), want)
			}
		}
	}
}

// PipeDream-Flush (Narayanan et al., ICML 2021): limiting the
// number of in-flight microbatches to the pipeline depth bounds the
// stashed activations to p, whatever m is; GPipe keeps all m until its
// flush. Rank r of 1F1B holds at most p-r.
func TestPaperInFlightActivations(t *testing.T) {
	for p := 1; p <= 16; p++ {
		for _, m := range []int{1, 2, 5, 8, 16, 33, 64} {
			g := unitRun(t, mustGenerate(t, "gpipe", Spec{Stages: p, Microbatches: m}))
			o := unitRun(t, mustGenerate(t, "1f1b", Spec{Stages: p, Microbatches: m}))
			for r := range p {
				if g.peak[r] != m {
					t.Fatalf("gpipe p=%d m=%d rank %d: peak %d, want m", p, m, r, g.peak[r])
				}
				if o.peak[r] != min(p-r, m) || o.peak[r] > p {
					t.Fatalf("1f1b p=%d m=%d rank %d: peak %d, want min(p-r, m) = %d", p, m, r, o.peak[r], min(p-r, m))
				}
			}
		}
	}
}

// Megatron-LM (Narayanan et al., SC'21, section 2.2.2): when each device
// holds v model chunks, forward and backward of a chunk take 1/v of a
// stage's time, so the bubble shrinks v-fold to (p-1)/(v m) of the ideal
// time and the iteration to 3(m + (p-1)/v), for m a multiple of p. Our
// schedule keeps the same time for every m >= p and takes the mirror
// image 3(p + (m-1)/v) when m < p (see interleaved.go).
func TestPaperInterleaved(t *testing.T) {
	for v := 2; v <= 5; v++ {
		for p := 1; p <= 12; p++ {
			for m := 1; m <= 4*p; m++ {
				r := unitRun(t, mustGenerate(t, "interleaved", Spec{Stages: p, Microbatches: m, Chunks: v}))
				want := 3 * (float64(m) + float64(p-1)/float64(v))
				if m < p {
					want = 3 * (float64(p) + float64(m-1)/float64(v))
				}
				if !near(r.makespan(), want) {
					t.Fatalf("v=%d p=%d m=%d: iteration %v, want %v", v, p, m, r.makespan(), want)
				}
				if m%p == 0 {
					if over, want := (r.makespan()-3*float64(m))/(3*float64(m)), float64(p-1)/float64(v*m); !near(over, want) {
						t.Fatalf("v=%d p=%d m=%d: bubble over ideal %v, want (p-1)/(vm) = %v", v, p, m, over, want)
					}
					// Rank 0 holds p + (p-1)/v stages' worth: v*p + p-1 chunks.
					if want := min(m*v, v*p+p-1); r.peak[0] != want {
						t.Fatalf("v=%d p=%d m=%d: rank 0 peak %d chunks, want %d", v, p, m, r.peak[0], want)
					}
				}
			}
		}
	}
}

// Zero Bubble (Qi et al., ICLR 2024, section 3): splitting the backward
// into B (input) and W (weights) and moving W into the cool-down lets
// ZB-H1 keep 1F1B's peak memory while its bubble drops to about a third
// of 1F1B's when F, B and W take the same time: (p-1) instead of 3(p-1),
// an iteration of 3m + p - 1. ZB-H2, allowed 2p-1 microbatches in flight,
// also fills the warm-up, and alone takes the same time.
func TestPaperZeroBubble(t *testing.T) {
	for _, tc := range []struct {
		name  string
		limit func(p int) int
	}{{"zb-h1", func(p int) int { return p }}, {"zb-h2", func(p int) int { return 2*p - 1 }}} {
		for p := 1; p <= 16; p++ {
			for m := 1; m <= 64; m++ {
				r := unitRun(t, mustGenerate(t, tc.name, Spec{Stages: p, Microbatches: m}))
				want := float64(3*m + p - 1)
				if m < p {
					want = float64(2*(p+m) - 1) // the last microbatch's round trip
				}
				if !near(r.makespan(), want) {
					t.Fatalf("%s p=%d m=%d: iteration %v, want %v", tc.name, p, m, r.makespan(), want)
				}
				if r.peak[0] > tc.limit(p) || r.peak[0] != min(m, tc.limit(p)) {
					t.Fatalf("%s p=%d m=%d: stage 0 holds %d, want min(m, %d)", tc.name, p, m, r.peak[0], tc.limit(p))
				}
			}
		}
	}
}

// DESIGN section 4's worked values, computed independently.
func TestPaperWorkedValues(t *testing.T) {
	for _, tc := range []struct {
		name string
		spec Spec
		want float64
	}{
		{"1f1b", Spec{Stages: 8, Microbatches: 32}, 117},
		{"gpipe", Spec{Stages: 8, Microbatches: 32}, 117},
		{"interleaved", Spec{Stages: 8, Microbatches: 32, Chunks: 2}, 106.5},
		{"interleaved", Spec{Stages: 8, Microbatches: 32, Chunks: 4}, 101.25},
		{"zb-h1", Spec{Stages: 8, Microbatches: 32}, 103},
		{"zb-h2", Spec{Stages: 8, Microbatches: 32}, 103},
		{"1f1b", Spec{Stages: 64, Microbatches: 4096}, 12477},
	} {
		if testing.Short() && tc.spec.Microbatches > 1000 {
			continue
		}
		r := unitRun(t, mustGenerate(t, tc.name, tc.spec))
		if !near(r.makespan(), tc.want) {
			t.Errorf("%s %+v: %v, want %v", tc.name, tc.spec, r.makespan(), tc.want)
		}
	}
}
