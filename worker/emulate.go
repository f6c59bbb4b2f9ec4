package worker

import (
	"context"
	"syscall"
	"time"

	"stagecoach/compute/builtin"
)

// The compute-speed emulation (Config.EmulateSpeed) makes an action of
// compute time m end m/speed after it began: after it, the worker waits
// m/speed minus what the action already took. With the built-in backend
// m is the CPU time this process spent in the action, so that other
// processes on a shared machine (the other workers, anything else)
// slowing the action down do not slow the emulated node further: it
// behaves as a machine of its own. A backend in another process is timed
// by the wall clock: the wait is (1/speed - 1) x the action's time.
// Process CPU time is the worker's own only when the worker has its
// process to itself (stagecoach worker, up); in-process workers count
// each other's, and the emulated node is slower still.

// emulation is one worker's: its speed and how it measures compute.
type emulation struct {
	speed float64
	cpu   bool // measure the process's CPU time (the backend runs in it)
}

func newEmulation(cfg Config) emulation {
	return emulation{speed: cfg.EmulateSpeed, cpu: cfg.Backend != nil && cfg.Backend.Name() == builtin.Name}
}

// on reports whether the worker emulates a slower node.
func (e emulation) on() bool { return e.speed > 0 && e.speed < 1 }

// mark is what an action's measurement starts from.
type mark struct {
	wall time.Time
	cpu  time.Duration
}

func (e emulation) start() mark {
	m := mark{wall: time.Now()}
	if e.on() && e.cpu {
		m.cpu = processCPU()
	}
	return m
}

// finish waits out what the emulated node needs beyond what the action
// begun at m took. It returns early, with ctx's error, when ctx ends.
func (e emulation) finish(ctx context.Context, m mark) error {
	if !e.on() {
		return nil
	}
	took := time.Since(m.wall)
	compute := took
	if e.cpu {
		compute = processCPU() - m.cpu
	}
	return wait(ctx, time.Duration(float64(compute)/e.speed)-took)
}

// wait sleeps d (nothing when d <= 0), or until ctx ends.
func wait(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// processCPU is the CPU time (user and system) this process has used.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
