// Package liveness is a worker's half of the membership protocol: it
// registers the worker in etcd under a lease and keeps it registered,
// registering again under a fresh lease when the lease is lost (etcd
// restarted, a partition longer than the TTL), and gives up when it has
// not been registered for longer than the rejoin timeout. The coordinator
// reads a lost registration as a lost worker. `stagecoach worker`, the
// benches and the tests all run workers through it, so they all behave
// as a deployed worker does.
package liveness

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"stagecoach/internal/etcdx"
)

// Options tune Keep.
type Options struct {
	// TTL is the lease TTL in seconds (0: etcdx.DefaultTTL).
	TTL int
	// Rejoin is how long Keep tries to register again before it gives
	// up (0: 30 s).
	Rejoin time.Duration
	// Retry is the pause between attempts (0: 500 ms).
	Retry time.Duration
	// Log receives registrations and failures (nil: discarded).
	Log *slog.Logger
	// Registered, when set, is true while the worker is registered (for
	// health checks).
	Registered *atomic.Bool
	// Crashed, when set and true at the end, leaves the lease to expire
	// instead of revoking it: what a crashed process leaves behind, for
	// the benches and tests that emulate crashes.
	Crashed func() bool
	// OnRegistered, when set, is called after each registration with the
	// lease's id.
	OnRegistered func(lease int64)
}

// Keep registers m in the job keys names and keeps it registered until
// ctx ends (then the lease is revoked, so the coordinator sees the worker
// leave at once, and Keep returns nil), or until it could not register
// for longer than o.Rejoin (then it returns the error).
func Keep(ctx context.Context, cli *clientv3.Client, keys etcdx.Keys, m etcdx.Member, o Options) error {
	if o.TTL == 0 {
		o.TTL = etcdx.DefaultTTL
	}
	if o.Rejoin == 0 {
		o.Rejoin = 30 * time.Second
	}
	if o.Retry == 0 {
		o.Retry = 500 * time.Millisecond
	}
	if o.Log == nil {
		o.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if o.Registered == nil {
		o.Registered = new(atomic.Bool)
	}
	failingSince := time.Time{}
	for ctx.Err() == nil {
		err := registerOnce(ctx, cli, keys, m, o, &failingSince)
		if ctx.Err() != nil {
			return nil
		}
		if failingSince.IsZero() {
			failingSince = time.Now()
		}
		if time.Since(failingSince) > o.Rejoin {
			return fmt.Errorf("worker %s: could not stay registered in etcd for %v: %w", m.Name, o.Rejoin, err)
		}
		o.Log.Warn(fmt.Sprintf("%v; registering again", err))
		select {
		case <-ctx.Done():
		case <-time.After(o.Retry):
		}
	}
	return nil
}

// registerOnce registers m under a fresh session and holds it until ctx
// ends (nil) or the lease is lost (an error).
func registerOnce(ctx context.Context, cli *clientv3.Client, keys etcdx.Keys, m etcdx.Member, o Options, failingSince *time.Time) error {
	sess, err := etcdx.NewSession(ctx, cli, o.TTL)
	if err != nil {
		return err
	}
	defer func() {
		if o.Crashed != nil && o.Crashed() {
			sess.Orphan()
			return
		}
		if err := etcdx.CloseSession(sess, 0); err != nil && ctx.Err() != nil {
			o.Log.Warn(fmt.Sprintf("lease not revoked (%v); it expires within %d s", err, o.TTL))
		}
	}()
	rctx, cancel := context.WithTimeout(ctx, time.Duration(o.TTL)*time.Second)
	err = etcdx.Register(rctx, sess, keys, m)
	cancel()
	if err != nil {
		return err
	}
	o.Registered.Store(true)
	defer o.Registered.Store(false)
	*failingSince = time.Time{}
	o.Log.Info(fmt.Sprintf("registered in job %s (lease %x, TTL %d s)", keys.Job(), sess.Lease(), o.TTL), "lease", fmt.Sprintf("%x", sess.Lease()))
	if o.OnRegistered != nil {
		o.OnRegistered(int64(sess.Lease()))
	}
	// Lifeline, not sess.Done: a keepalive the client dropped while etcd
	// changed leaders leaves the lease alive, and registering again would
	// look like a lost worker.
	select {
	case <-ctx.Done():
		return nil
	case <-etcdx.Lifeline(sess):
		return errors.New("lease lost")
	}
}
