package parallel

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestForCoversOnceInOrder: every index runs exactly once, each worker's
// range is contiguous, and the split depends only on the counts.
func TestForCoversOnceInOrder(t *testing.T) {
	for _, c := range []struct{ workers, n int }{{1, 0}, {4, 0}, {1, 7}, {3, 7}, {8, 3}, {2, 1000}} {
		seen := make([]int, c.n)
		ranges := map[int][2]int{}
		var mu sync.Mutex
		For(c.workers, c.n, func(w, lo, hi int) {
			mu.Lock()
			defer mu.Unlock()
			if _, dup := ranges[w]; dup {
				t.Errorf("workers %d n %d: worker %d ran twice", c.workers, c.n, w)
			}
			ranges[w] = [2]int{lo, hi}
			for i := lo; i < hi; i++ {
				seen[i]++
			}
		})
		for i, k := range seen {
			if k != 1 {
				t.Fatalf("workers %d n %d: index %d ran %d times", c.workers, c.n, i, k)
			}
		}
		w := min(c.workers, c.n)
		if c.n > 0 && len(ranges) != w {
			t.Fatalf("workers %d n %d: %d workers ran, want %d", c.workers, c.n, len(ranges), w)
		}
		for i := 0; i < len(ranges); i++ {
			if r := ranges[i]; r != [2]int{i * c.n / w, (i + 1) * c.n / w} {
				t.Fatalf("workers %d n %d: worker %d took %v", c.workers, c.n, i, r)
			}
		}
	}
}

func TestStealCoversOnce(t *testing.T) {
	for _, c := range []struct{ workers, n int }{{1, 0}, {4, 0}, {1, 7}, {3, 7}, {8, 3}, {2, 1000}, {5, 999}} {
		seen := make([]atomic.Int32, c.n)
		var busy [8]atomic.Int32
		Steal(c.workers, c.n, func(w, i int) {
			if w < 0 || w >= min(c.workers, c.n) {
				t.Errorf("workers %d n %d: worker index %d", c.workers, c.n, w)
				return
			}
			if busy[w].Add(1) != 1 {
				t.Errorf("workers %d n %d: two goroutines ran as worker %d at once", c.workers, c.n, w)
			}
			seen[i].Add(1)
			busy[w].Add(-1)
		})
		for i := range seen {
			if k := seen[i].Load(); k != 1 {
				t.Fatalf("workers %d n %d: index %d ran %d times", c.workers, c.n, i, k)
			}
		}
	}
}

// TestStealTakesAStalledWorkersShare holds worker 1 on its first
// iteration until every other iteration is done: only if worker 0 takes
// the rest of worker 1's range can that happen (with For the test would
// time out).
func TestStealTakesAStalledWorkersShare(t *testing.T) {
	const n = 40
	var done atomic.Int32
	all := make(chan struct{})
	var stalled atomic.Bool
	finish := func() {
		if done.Add(1) == n-1 {
			close(all)
		}
	}
	Steal(2, n, func(w, i int) {
		if w == 1 && stalled.CompareAndSwap(false, true) {
			select {
			case <-all:
			case <-time.After(20 * time.Second):
				t.Errorf("worker 0 did not take worker 1's iterations: %d of %d done", done.Load(), n-1)
			}
			return
		}
		// Worker 0 waits for worker 1 to hold its first iteration.
		for deadline := time.Now().Add(20 * time.Second); !stalled.Load(); time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				t.Errorf("worker 1 never started")
				break
			}
		}
		finish()
	})
}
