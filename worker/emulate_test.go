package worker

import (
	"context"
	"strings"
	"testing"
	"time"
)

// Timed by the wall clock (a backend in another process), a node at half
// speed waits as long again as the action took; a timer never fires
// early, so the lower bound holds on any machine.
func TestEmulationWaitsTheSlowerNodesExtra(t *testing.T) {
	e := emulation{speed: 0.5}
	m := e.start()
	m.wall = m.wall.Add(-20 * time.Millisecond) // an action of 20 ms
	before := time.Now()
	if err := e.finish(context.Background(), m); err != nil {
		t.Fatal(err)
	}
	if waited := time.Since(before); waited < 19*time.Millisecond {
		t.Fatalf("half speed waited %v after a 20 ms action, want about 20 ms more", waited)
	}
}

// Timed by CPU time (the built-in backend), an action that used no CPU
// (it only waited) costs the emulated node nothing more.
func TestEmulationByCPUTimeIgnoresTimeNotComputed(t *testing.T) {
	e := emulation{speed: 0.5, cpu: true}
	m := e.start()
	m.wall = m.wall.Add(-time.Hour) // an hour passed, none of it computing here
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := e.finish(ctx, m); err != nil {
		t.Fatalf("%v: an action that computed nothing was made to wait", err)
	}
	if processCPU() <= 0 {
		t.Fatal("no CPU time measured for this process")
	}
}

func TestEmulationOffAndCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	for _, speed := range []float64{0, 1} {
		e := emulation{speed: speed}
		m := e.start()
		m.wall = m.wall.Add(-time.Hour)
		if err := e.finish(ctx, m); err != nil {
			t.Errorf("speed %v: %v, want no emulation", speed, err)
		}
	}
	e := emulation{speed: 0.001}
	m := e.start()
	m.wall = m.wall.Add(-time.Second)
	if err := e.finish(ctx, m); err != context.Canceled {
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
