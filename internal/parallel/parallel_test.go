package parallel

import (
	"sync"
	"testing"
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
