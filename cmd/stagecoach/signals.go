package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"
)

// How long a process has to stop after SIGTERM or SIGINT before it exits
// regardless: a worker stops serving and revokes its lease (bounded well
// below this); a coordinator also resigns its leadership. Both stay under
// docker's default 10 s stop timeout.
const (
	workerStopLimit      = 3 * time.Second
	coordinatorStopLimit = 8 * time.Second
)

// stopSignal is the cause of a context ended by a signal.
type stopSignal struct{ sig os.Signal }

func (s stopSignal) Error() string { return "stopped by " + signalName(s.sig) }

func signalName(sig os.Signal) string {
	if s, ok := sig.(syscall.Signal); ok {
		switch s {
		case syscall.SIGTERM:
			return "SIGTERM"
		case syscall.SIGINT:
			return "SIGINT"
		}
	}
	return sig.String()
}

// stoppedBySignal reports whether ctx ended because of a signal (or the
// parent's exit that exitWithParent watches): the process was asked to
// stop and did, which is not a failure.
func stoppedBySignal(ctx context.Context) bool {
	var s stopSignal
	return errors.As(context.Cause(ctx), &s) || errors.Is(context.Cause(ctx), errParentGone)
}

// stopOnSignal returns a context that ends on the first SIGTERM or SIGINT,
// with a stopSignal cause. From then on the process has limit to stop;
// a second signal, or limit passing, exits at once with status 1, so a stop
// held up by something unbounded cannot keep the process alive. stop
// releases the signals and ends the context.
func stopOnSignal(parent context.Context, log *slog.Logger, limit time.Duration) (context.Context, func()) {
	ctx, cancel := context.WithCancelCause(parent)
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	done := make(chan struct{})
	go func() {
		select {
		case sig := <-sigs:
			log.Info(fmt.Sprintf("%s: stopping (at most %v)", signalName(sig), limit))
			cancel(stopSignal{sig})
		case <-ctx.Done():
			// The parent context ended (exitWithParent): the same limit.
		case <-done:
			return
		}
		t := time.NewTimer(limit)
		defer t.Stop()
		select {
		case sig := <-sigs:
			log.Error(fmt.Sprintf("second signal (%s) while stopping: exiting now", signalName(sig)))
			os.Exit(1)
		case <-t.C:
			log.Error(fmt.Sprintf("still stopping %v after being told to: exiting now", limit))
			os.Exit(1)
		case <-done:
		}
	}()
	var once sync.Once
	return ctx, func() {
		once.Do(func() {
			signal.Stop(sigs)
			close(done)
			cancel(nil)
		})
	}
}

// errParentGone is the cause of a context ended by exitWithParent.
var errParentGone = errors.New("parent process gone")

// parentPollInterval is how often exitWithParent looks at the parent.
const parentPollInterval = 200 * time.Millisecond

// exitWithParent returns a context that also ends, with cause
// errParentGone, once pid is no longer this process's parent: the parent
// died (even by SIGKILL) and the process was re-parented. A backstop to
// the parent-death signal `up` asks the kernel for, which a parent thread
// exiting early could fire too soon or a kernel could lack.
func exitWithParent(ctx context.Context, pid int, log *slog.Logger) context.Context {
	ctx, cancel := context.WithCancelCause(ctx)
	go func() {
		t := time.NewTicker(parentPollInterval)
		defer t.Stop()
		for {
			if os.Getppid() != pid {
				log.Warn(fmt.Sprintf("parent process %d is gone: stopping", pid))
				cancel(errParentGone)
				return
			}
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	return ctx
}
