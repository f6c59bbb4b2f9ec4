// Package memprobe measures the live Go heap of a process at chosen
// points, so that the memory the simulator predicts for a worker can be
// set beside what the worker really holds. Every sample collects garbage
// first and reads the bytes the collection found live: exact, and costly
// (a full collection per sample), which is why a worker samples only when
// asked to (`worker --memory-probe`).
package memprobe

import (
	"runtime"
	"runtime/metrics"
	"sync"
)

// Probe keeps the baseline taken when it started and the largest sample
// since it was last read. A nil *Probe samples nothing.
type Probe struct {
	mu       sync.Mutex
	baseline uint64
	peak     uint64
	at       string
}

// Start takes the baseline: the live heap now, before the caller holds
// what it is to measure (for a worker, before any model is loaded).
func Start() *Probe { return &Probe{baseline: Live()} }

// Rebase takes the baseline again: a worker does at its first plan, once
// its servers, clients and the process's lazily built tables are in place
// and before it loads a model.
func (p *Probe) Rebase() {
	if p == nil {
		return
	}
	b := Live()
	p.mu.Lock()
	defer p.mu.Unlock()
	p.baseline = b
}

// Sample measures the live heap and keeps it if it is the largest since
// the last Take, with at, which names where it was taken.
func (p *Probe) Sample(at string) {
	if p == nil {
		return
	}
	b := Live()
	p.mu.Lock()
	defer p.mu.Unlock()
	if b > p.peak {
		p.peak, p.at = b, at
	}
}

// Take returns the largest sample since the last Take, less the baseline
// (0 when the heap shrank below it), and where it was taken; ok is false
// when nothing was sampled. It starts the next period.
func (p *Probe) Take() (bytes uint64, at string, ok bool) {
	if p == nil {
		return 0, "", false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	peak, at := p.peak, p.at
	p.peak, p.at = 0, ""
	if peak == 0 {
		return 0, "", false
	}
	if peak > p.baseline {
		bytes = peak - p.baseline
	}
	return bytes, at, true
}

// Baseline is the live heap Start or the last Rebase measured.
func (p *Probe) Baseline() uint64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.baseline
}

// Live collects garbage and returns the bytes of heap objects it found
// live.
func Live() uint64 {
	runtime.GC()
	s := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	metrics.Read(s)
	if s[0].Value.Kind() != metrics.KindUint64 {
		return 0
	}
	return s[0].Value.Uint64()
}
