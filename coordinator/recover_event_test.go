package coordinator

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"stagecoach/coordinator/policy"
	"stagecoach/internal/etcdx"
)

// The errors that end an iteration become the policy's events: the run
// loop's only classification of failures.
func TestFailureEvent(t *testing.T) {
	live := context.Background()
	stopped, cancel := context.WithCancel(context.Background())
	cancel()
	watch := fmt.Errorf("%w: plan worker 1 (w1 at 127.0.0.1:1) left the job (lease 7 lapsed or replaced)", ErrWorkerLost)
	for _, k := range []struct {
		name   string
		parent context.Context
		err    error
		kind   policy.EventKind
		fatal  bool
		worker string
	}{
		{"a plain RPC failure", live, errors.New("connection reset"), policy.RPCFailure, false, ""},
		{"a replaced registration", live, fmt.Errorf("%w: RunIteration 3: canceled", watch), policy.WorkerLost, false, ""},
		{"a vanished registration", live, fmt.Errorf("%w: RunIteration 3: canceled", lapsed{watch, "w1"}), policy.LeaseLapse, false, "w1"},
		{"leadership lost", live, fmt.Errorf("commit: %w", etcdx.ErrDeposed), policy.LeaderChange, false, ""},
		{"arithmetic a retry repeats", live, fmt.Errorf("%w: norm is NaN", errNotDeterministic), policy.RPCFailure, true, ""},
		{"the job stopped", stopped, errors.New("context canceled"), policy.RPCFailure, true, ""},
	} {
		e := failureEvent(k.parent, k.err)
		if e.Kind != k.kind || e.Fatal != k.fatal {
			t.Errorf("%s: event %v fatal %v, want %v fatal %v", k.name, e.Kind, e.Fatal, k.kind, k.fatal)
		}
		if k.worker != "" && (len(e.Workers) != 1 || e.Workers[0] != k.worker) {
			t.Errorf("%s: workers %v, want [%s]", k.name, e.Workers, k.worker)
		}
	}
	if got := (lapsed{watch, "w1"}).Error(); got != watch.Error() {
		t.Errorf("a lapse changes the error text: %q", got)
	}
}

// The wall clock is the default; a test or simulation injects another.
func TestConfigClockDefault(t *testing.T) {
	var c Config
	if _, ok := c.clock().(RealClock); !ok {
		t.Fatalf("unset clock is %T, want RealClock", c.clock())
	}
}
