// Package parallel runs the iterations of a loop on a fixed number of
// goroutines, each taking one contiguous range fixed by the count alone.
// Callers that give every output element to one iteration keep their
// results independent of the number of goroutines and of timing.
package parallel

import "sync"

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
	var wg sync.WaitGroup
	for i := 1; i < w; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f(i, i*n/w, (i+1)*n/w)
		}()
	}
	f(0, 0, n/w)
	wg.Wait()
}
