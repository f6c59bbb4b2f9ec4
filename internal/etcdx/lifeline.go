package etcdx

import (
	"context"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

// Lifeline returns a channel that closes when the session's lease is gone
// for good: expired or revoked on the server, or unconfirmed for longer
// than its TTL, or given up by its owner (the session closed or
// orphaned), or its client closed.
//
// concurrency.Session.Done closes earlier than that. The client drops a
// keepalive whose response is late by a TTL, which happens while etcd
// elects a new leader (about 1-2 s) when the TTL is short; yet the server
// gives every lease a fresh TTL after a leader change, so the lease, and
// every key bound to it, is still alive. Giving up then would depose a
// healthy leader and make every worker re-register, each looking like a
// lost worker. So when the client gives up on the lease this asks the
// server about it and, while it lives, keeps it alive again under the
// client's context (the session's own context ends with its keepalive).
//
// Owner or client? The lifeline holds a keepalive of its own on the same
// lease. When the client gives up on a lease it closes every keepalive of
// it; when the owner closes or orphans the session only the session's
// closes. Once the lifeline has kept a lease alive past a failed renewal,
// the session no longer renews it: closing the session (which revokes the
// lease) or the client ends the lifeline, orphaning it does not.
//
// Believing a lease alive a little too long is safe: every leader write is
// fenced by its key in etcd, and workers refuse a deposed leader's token.
//
// Every keepalive the client gives up on counts in LeaseRenewalFailures;
// a lifeline that ends because the lease is gone counts in LeasesLost.
func Lifeline(s *concurrency.Session) <-chan struct{} {
	out := make(chan struct{})
	cli, id := s.Client(), s.Lease()
	ctx, cancel := context.WithCancel(cli.Ctx())
	ka := s.Done()
	var own <-chan *clientv3.LeaseKeepAliveResponse
	select {
	case <-ka:
		// Already over, for a reason that can no longer be told: give the
		// lease up, the safe side.
	default:
		if ch, err := cli.KeepAlive(ctx, id); err == nil {
			own = ch
		}
	}
	go func() {
		defer close(out)
		defer cancel()
		if own == nil {
			return
		}
		for {
			select {
			case <-ctx.Done():
				return // the client closed
			case _, open := <-own:
				if open {
					continue
				}
			case <-ka:
				if !drainedClosed(own) {
					return // the owner closed or orphaned the session
				}
			}
			if ctx.Err() != nil {
				return
			}
			renewalFailures.Add(1)
			// The session is done for good; the lifeline's own keepalive
			// is the only one from now on.
			ka, own = nil, nil
			// Unconfirmed since the client gave up; the granted TTL is
			// learnt from the first answer.
			confirmed, granted := time.Now(), maxUnconfirmed
			for own == nil {
				if ctx.Err() != nil {
					return
				}
				qctx, qcancel := context.WithTimeout(ctx, time.Second)
				ttl, err := cli.TimeToLive(qctx, id)
				qcancel()
				if err == nil {
					if ttl.TTL <= 0 {
						leasesLost.Add(1)
						return // expired or revoked: really gone
					}
					confirmed, granted = time.Now(), time.Duration(ttl.GrantedTTL)*time.Second
					if ch, err := cli.KeepAlive(ctx, id); err == nil {
						own = ch
						continue
					}
				}
				// No answer (no quorum yet): past its TTL the lease cannot
				// be relied on any more.
				if time.Since(confirmed) > granted {
					if ctx.Err() == nil {
						leasesLost.Add(1)
					}
					return
				}
				sleepCtx(ctx, retryDelay)
			}
		}
	}()
	return out
}

// drainedClosed reads what is buffered in ch and reports whether it is
// closed. The client closes every keepalive channel of a lease it gives up
// on before the session notices, so when the session's Done has closed
// for that reason, ch is found closed.
func drainedClosed(ch <-chan *clientv3.LeaseKeepAliveResponse) bool {
	for {
		select {
		case _, open := <-ch:
			if !open {
				return true
			}
		default:
			return false
		}
	}
}

// maxUnconfirmed bounds how long Lifeline waits for etcd's first answer
// about a lease before giving it up.
const maxUnconfirmed = 5 * time.Second

// Process-wide counts of what every Lifeline saw. The lifelines of the
// coordinator's election and of the worker's registration both count
// here, so a process exposes them without being handed each session.
var renewalFailures, leasesLost atomic.Uint64

// LeaseRenewalFailures is how many times in this process a lease's
// keepalive ended while its session was wanted: the etcd client gave up
// on a renewal (no answer within a TTL, for example while etcd elects a
// leader or the connection is cut) or the lease was gone. Each is followed
// by the lease being kept alive again or by LeasesLost going up.
func LeaseRenewalFailures() uint64 { return renewalFailures.Load() }

// LeasesLost is how many lifelines in this process ended because their
// lease was gone (expired, revoked, or unconfirmed for longer than its
// TTL), not because their owner or client closed them.
func LeasesLost() uint64 { return leasesLost.Load() }
