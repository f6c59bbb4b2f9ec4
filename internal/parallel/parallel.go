// Package parallel runs the iterations of a loop on a fixed number of
// goroutines. For gives each goroutine one contiguous range fixed by the
// count alone; Steal starts from the same ranges but lets a goroutine that
// has finished its own take iterations another has not started. Callers
// that give every output element to one iteration keep their results
// independent of the number of goroutines and of timing either way.
package parallel

import (
	"sync/atomic"
)

// For splits [0, n) into w = min(workers, n) contiguous ranges, runs
// f(worker, lo, hi) for each (worker 0 on the calling goroutine) and waits
// for all. worker is in [0, w), so f can index per-worker scratch.
func For(workers, n int, f func(worker, lo, hi int)) {
	w := min(workers, n)
	if w <= 1 {
		if n > 0 {
			f(0, 0, n)
		}
		return
	}
	var j join
	j.add(w - 1)
	for i := 1; i < w; i++ {
		spawn(func() {
			defer j.done()
			f(i, i*n/w, (i+1)*n/w)
		})
	}
	f(0, 0, n/w)
	j.wait()
}

// Steal runs f(worker, i) once for every i in [0, n) on w = min(workers,
// n) goroutines (worker 0 the calling one) and waits for all. Worker k
// starts on For's k-th range, front to back; once it is through, it takes
// the other ranges' last iterations, one at a time, until none is left.
// So a goroutine that starts late (its thread still waking) or loses its
// core to another process delays the loop by one iteration, not by its
// whole share. worker is in [0, w) and no two goroutines run f with the
// same worker at once, so f can index per-worker scratch; which worker
// runs a given i depends on timing. n must be below 2³².
func Steal(workers, n int, f func(worker, i int)) {
	if uint64(n) > 1<<32-1 {
		panic("parallel.Steal: n out of range")
	}
	w := min(workers, n)
	if w <= 1 {
		for i := range n {
			f(0, i)
		}
		return
	}
	spans := make([]span, w)
	for k := range spans {
		spans[k].set(k*n/w, (k+1)*n/w)
	}
	run := func(me int) {
		for {
			i, ok := spans[me].take(true)
			if !ok {
				break
			}
			f(me, i)
		}
		for d := 1; d < w; d++ {
			victim := &spans[(me+d)%w]
			for {
				i, ok := victim.take(false)
				if !ok {
					break
				}
				f(me, i)
			}
		}
	}
	var j join
	j.add(w - 1)
	for k := 1; k < w; k++ {
		spawn(func() {
			defer j.done()
			run(k)
		})
	}
	run(0)
	j.wait()
}

// span is the iterations [next, end) of one of Steal's ranges not yet
// taken, packed into one word so that its owner (from the front) and
// thieves (from the back) claim iterations with a compare-and-swap. The
// padding keeps two spans off one cache line.
type span struct {
	v atomic.Uint64
	_ [56]byte
}

func (s *span) set(next, end int) { s.v.Store(uint64(next)<<32 | uint64(end)) }

// take claims the first iteration left (front) or the last.
func (s *span) take(front bool) (int, bool) {
	for {
		old := s.v.Load()
		next, end := int(old>>32), int(uint32(old))
		if next >= end {
			return 0, false
		}
		i, rest := next, uint64(next+1)<<32|uint64(end)
		if !front {
			i, rest = end-1, uint64(next)<<32|uint64(end-1)
		}
		if s.v.CompareAndSwap(old, rest) {
			return i, true
		}
	}
}
