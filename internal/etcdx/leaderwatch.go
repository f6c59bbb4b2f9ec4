package etcdx

import (
	"context"
	"fmt"
	"sync/atomic"

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
	rev  atomic.Int64
}

// WatchLeader reads job k's election and follows it until ctx ends. The
// first read must succeed; later watch failures are retried (Refresh
// still reads etcd directly).
func WatchLeader(ctx context.Context, cli *clientv3.Client, k Keys) (*LeaderWatch, error) {
	w := &LeaderWatch{cli: cli, keys: k}
	hdr, err := w.read(ctx)
	if err != nil {
		return nil, err
	}
	go w.follow(ctx, hdr+1)
	return w, nil
}

// LeaderRev is the current leader's revision as last seen (0: none).
func (w *LeaderWatch) LeaderRev() int64 { return w.rev.Load() }

// Refresh reads the election and returns the current leader's revision.
func (w *LeaderWatch) Refresh(ctx context.Context) (int64, error) {
	if _, err := w.read(ctx); err != nil {
		return 0, err
	}
	return w.rev.Load(), nil
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
	w.rev.Store(rev)
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
