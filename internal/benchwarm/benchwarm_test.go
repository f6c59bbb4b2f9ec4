package benchwarm

import (
	"errors"
	"testing"
	"time"
)

var sink []byte

// TestRunWaitsForCollections allocates enough per step that collections
// happen, and checks Run returned only after Cycles of them.
func TestRunWaitsForCollections(t *testing.T) {
	before := GCCycles()
	steps := 0
	if err := Run(func() error { sink = make([]byte, 1<<20); steps++; return nil }, time.Minute); err != nil {
		t.Fatal(err)
	}
	if got := GCCycles() - before; got < Cycles {
		t.Fatalf("Run returned after %d collections (%d steps), want at least %d", got, steps, Cycles)
	}
}

// TestRunStopsAtMax: a step that allocates nothing never sees a
// collection; Run still returns once max has passed, after one step at
// least.
func TestRunStopsAtMax(t *testing.T) {
	steps := 0
	start := time.Now()
	if err := Run(func() error { steps++; time.Sleep(time.Millisecond); return nil }, 20*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if steps < 1 || time.Since(start) < 20*time.Millisecond {
		t.Fatalf("%d steps in %v", steps, time.Since(start))
	}
}

func TestRunReturnsStepError(t *testing.T) {
	bad := errors.New("bad step")
	steps := 0
	if err := Run(func() error { steps++; return bad }, time.Minute); !errors.Is(err, bad) || steps != 1 {
		t.Fatalf("err %v after %d steps, want %v after 1", err, steps, bad)
	}
}
