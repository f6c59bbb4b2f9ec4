package memprobe

import (
	"runtime"
	"runtime/debug"
	"sync"
	"testing"
)

// TestProbeSeesWhatIsHeld: holding 8 MiB between samples shows as about
// 8 MiB over the baseline, at the sample that saw it; once released
// and taken, the next period starts over.
func TestProbeSeesWhatIsHeld(t *testing.T) {
	p := Start()
	if _, _, ok := p.Take(); ok {
		t.Fatal("Take reported a sample before any was taken")
	}
	p.Sample("empty")
	held := make([]byte, 8<<20)
	for i := range held {
		held[i] = byte(i)
	}
	p.Sample("holding")
	// The test process's other objects come and go by some KiB between
	// the baseline and the sample.
	const slack = 256 << 10
	b, at, ok := p.Take()
	if !ok || at != "holding" || b < 8<<20-slack {
		t.Fatalf("Take = %d bytes at %q (ok %v), want >= %d at \"holding\"", b, at, ok, 8<<20-slack)
	}
	sum := 0
	for _, v := range held {
		sum += int(v)
	}
	held = nil
	p.Sample("released")
	b, at, _ = p.Take()
	if at != "released" || b >= 8<<20 {
		t.Fatalf("after release: %d bytes at %q, want < %d (sum %d)", b, at, 8<<20, sum)
	}
	var nilProbe *Probe
	nilProbe.Sample("x")
	if _, _, ok := nilProbe.Take(); ok {
		t.Fatal("a nil probe reported a sample")
	}
}

// An idle pool item (as gRPC's buffers are between requests) survives one
// collection, so a single-collection reading may or may not hold it; the
// baseline Rebase takes does not.
func TestRebaseLeavesIdlePoolItemsOut(t *testing.T) {
	// No collection but the probe's own: one started by the allocation
	// below (or anything else) before Start would already have moved the
	// item to the pool's victim cache, and Start's would free it.
	defer debug.SetGCPercent(debug.SetGCPercent(-1))
	var pool sync.Pool
	var p *Probe
	var withItem uint64
	// Under the race detector Put drops a quarter of its items at random:
	// put again until the pool holds one.
	for attempt := 0; ; attempt++ {
		item := make([]byte, 8<<20)
		pool.Put(&item)
		p = Start() // one collection: the item is still live
		if withItem = p.Baseline(); withItem >= 8<<20 {
			break
		}
		if attempt == 20 {
			t.Fatalf("the pool dropped its item 20 times in a row (baseline %d)", withItem)
		}
	}
	p.Rebase()
	if without := p.Baseline(); without+8<<20 > withItem+(1<<20) {
		t.Errorf("baseline %d after Rebase, %d before: the idle 8 MiB pool item should be gone", without, withItem)
	}
	runtime.KeepAlive(&pool)
}
