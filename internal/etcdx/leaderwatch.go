package etcdx

import (
	"context"
	"fmt"
	"sync"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// LeaderWatch follows a job's election for a worker: the current leader
// is the key under Keys.ElectionPrefix with the lowest create revision
// (concurrency.Election's rule: candidates queue behind it), and its
// create revision is the fencing token a leader's commands must carry.
// A worker admits a command only under that revision, so a token from a
// message is never adopted: a forged larger one names no leader etcd
// knows.
type LeaderWatch struct {
	cli  *clientv3.Client
	keys Keys

	mu  sync.Mutex
	rev int64
	// at is the store revision rev was read at: a slower read of an
	// older revision (Refresh racing follow) must not bring back a
	// leader that was replaced.
	at int64
	// changed is closed, and replaced, when rev changes.
	changed chan struct{}
}

// WatchLeader reads job k's election and follows it until ctx ends. The
// first read must succeed; later watch failures are retried (Refresh
// still reads etcd directly).
func WatchLeader(ctx context.Context, cli *clientv3.Client, k Keys) (*LeaderWatch, error) {
	w := &LeaderWatch{cli: cli, keys: k, changed: make(chan struct{})}
	hdr, err := w.read(ctx)
	if err != nil {
		return nil, err
	}
	go w.follow(ctx, hdr+1)
	return w, nil
}

// LeaderRev is the current leader's revision as last seen (0: none).
func (w *LeaderWatch) LeaderRev() int64 {
	rev, _ := w.Changes()
	return rev
}

// Changes returns the current leader's revision as last seen and a
// channel closed once a read of the election shows another.
func (w *LeaderWatch) Changes() (int64, <-chan struct{}) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.rev, w.changed
}

func (w *LeaderWatch) store(rev, at int64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if at < w.at {
		return
	}
	w.at = at
	if rev != w.rev {
		w.rev = rev
		close(w.changed)
		w.changed = make(chan struct{})
	}
}

// Refresh reads the election and returns the current leader's revision.
func (w *LeaderWatch) Refresh(ctx context.Context) (int64, error) {
	if _, err := w.read(ctx); err != nil {
		return 0, err
	}
	return w.LeaderRev(), nil
}

// read stores the current leader's revision and returns the store
// revision it was read at.
func (w *LeaderWatch) read(ctx context.Context) (int64, error) {
	resp, err := w.cli.Get(ctx, w.keys.ElectionPrefix(), clientv3.WithFirstCreate()...)
	if err != nil {
		return 0, fmt.Errorf("etcdx: read the election of job %s: %w", w.keys.Job(), err)
	}
	var rev int64
	if len(resp.Kvs) > 0 {
		rev = resp.Kvs[0].CreateRevision
	}
	w.store(rev, resp.Header.Revision)
	return resp.Header.Revision, nil
}

// follow re-reads the election after every change under its prefix. A
// read, not the event itself, decides: a deleted leader key hands the
// lead to the next candidate, whose key the event does not carry.
func (w *LeaderWatch) follow(ctx context.Context, from int64) {
	for ctx.Err() == nil {
		wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
		ch := w.cli.Watch(wctx, w.keys.ElectionPrefix(), clientv3.WithPrefix(), clientv3.WithRev(from))
		for resp := range ch {
			if resp.Err() != nil {
				break // compacted or lost: re-read below and watch again
			}
			if len(resp.Events) == 0 {
				continue
			}
			if hdr, err := w.read(ctx); err == nil {
				from = hdr + 1
			} else {
				from = resp.Header.Revision + 1
			}
		}
		cancel()
		if hdr, err := w.read(ctx); err == nil {
			from = hdr + 1
		}
		sleepCtx(ctx, retryDelay)
	}
}
