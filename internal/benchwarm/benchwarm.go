// Package benchwarm brings a benchmark's process to its steady state
// before anything is timed. Until the Go heap has been collected a few
// times, the buffers a step allocates land on pages the process has never
// touched, and on some virtual machines the first touch of a page costs
// 10-25 µs: a 1 MiB buffer then takes milliseconds to fill, once. A long
// training run soon leaves that phase behind, so benchmarks should too.
package benchwarm

import (
	"runtime/metrics"
	"time"
)

// Cycles is how many collections Run waits for.
const Cycles = 3

// GCCycles is the number of garbage collections this process has
// finished.
func GCCycles() uint64 {
	m := []metrics.Sample{{Name: "/gc/cycles/total:gc-cycles"}}
	metrics.Read(m)
	return m[0].Value.Uint64()
}

// Run calls step at least once, and again until the process has finished
// Cycles collections since Run began or max has passed. It returns the
// first error step returns.
func Run(step func() error, max time.Duration) error {
	gc0, start := GCCycles(), time.Now()
	for {
		if err := step(); err != nil {
			return err
		}
		if GCCycles()-gc0 >= Cycles || time.Since(start) >= max {
			return nil
		}
	}
}
