package worker

import (
	"context"
	"time"
)

// emulateSpeed is the compute-speed emulation (Config.EmulateSpeed): after
// an action that took took on this machine, it waits what a node of
// speed would need beyond that, (1/speed - 1) x took. Off for speed 0 or
// 1. It returns early, with ctx's error, when ctx ends.
func emulateSpeed(ctx context.Context, speed float64, took time.Duration) error {
	if speed <= 0 || speed >= 1 || took <= 0 {
		return nil
	}
	t := time.NewTimer(time.Duration(float64(took) * (1/speed - 1)))
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
