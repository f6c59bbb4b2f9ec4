package worker

import (
	"context"
	"strings"
	"testing"
	"time"
)

// A node at half speed waits as long again as the action took; a timer
// never fires early, so the lower bound holds on any machine.
func TestEmulateSpeedWaitsTheSlowerNodesExtra(t *testing.T) {
	const took = 20 * time.Millisecond
	start := time.Now()
	if err := emulateSpeed(context.Background(), 0.5, took); err != nil {
		t.Fatal(err)
	}
	if waited := time.Since(start); waited < took {
		t.Fatalf("half speed waited %v after a %v action, want at least %v", waited, took, took)
	}
}

func TestEmulateSpeedOffAndCancelled(t *testing.T) {
	for _, speed := range []float64{0, 1} {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		// Off: no wait, so a cancelled context is not even looked at.
		if err := emulateSpeed(ctx, speed, time.Hour); err != nil {
			t.Errorf("speed %v: %v, want no emulation", speed, err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := emulateSpeed(ctx, 0.001, time.Hour); err != context.Canceled {
		t.Errorf("a cancelled wait returned %v, want context.Canceled", err)
	}
}

func TestConfigRejectsSpeedsThatCannotBeEmulated(t *testing.T) {
	for _, speed := range []float64{-0.5, 1.5} {
		_, err := New(Config{Name: "w", Listen: "127.0.0.1:0", Job: "j", DataDir: t.TempDir(), EmulateSpeed: speed})
		if err == nil || !strings.Contains(err.Error(), "emulated speed") {
			t.Errorf("speed %v: %v, want an error naming the emulated speed", speed, err)
		}
	}
}
