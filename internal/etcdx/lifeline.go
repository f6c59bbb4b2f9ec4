package etcdx

import (
	"context"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

// Lifeline returns a channel that closes when the session's lease is gone
// for good: expired or revoked on the server, or unconfirmed for longer
// than its TTL, or the session closed.
//
// concurrency.Session.Done closes earlier than that. The client drops a
// keepalive whose response is late by a TTL, which happens while etcd
// elects a new leader (about 1-2 s) when the TTL is short; yet the server
// gives every lease a fresh TTL after a leader change, so the lease, and
// every key bound to it, is still alive. Giving up then would depose a
// healthy leader and make every worker re-register, each looking like a
// lost worker. So when Done closes this asks the server about the lease
// and, while it lives, keeps it alive again.
//
// Believing a lease alive a little too long is safe: every leader write is
// fenced by its key in etcd, and workers refuse a deposed leader's token.
func Lifeline(s *concurrency.Session) <-chan struct{} {
	out := make(chan struct{})
	go func() {
		defer close(out)
		ctx, cli, id := s.Ctx(), s.Client(), s.Lease()
		ka := s.Done()
		for {
			select {
			case <-ctx.Done():
				return
			case <-ka:
			}
			// Unconfirmed since the client gave up; the granted TTL is
			// learnt from the first answer.
			confirmed, granted := time.Now(), maxUnconfirmed
			var next <-chan *clientv3.LeaseKeepAliveResponse
			for next == nil {
				if ctx.Err() != nil {
					return
				}
				qctx, cancel := context.WithTimeout(ctx, time.Second)
				ttl, err := cli.TimeToLive(qctx, id)
				cancel()
				if err == nil {
					if ttl.TTL <= 0 {
						return // expired or revoked: really gone
					}
					confirmed, granted = time.Now(), time.Duration(ttl.GrantedTTL)*time.Second
					if ch, err := cli.KeepAlive(ctx, id); err == nil {
						next = ch
						continue
					}
				}
				// No answer (no quorum yet): past its TTL the lease cannot
				// be relied on any more.
				if time.Since(confirmed) > granted {
					return
				}
				sleepCtx(ctx, retryDelay)
			}
			done := make(chan struct{})
			go func(ch <-chan *clientv3.LeaseKeepAliveResponse) {
				for range ch { // drain: the client closes it when it gives up
				}
				close(done)
			}(next)
			ka = done
		}
	}()
	return out
}

// maxUnconfirmed bounds how long Lifeline waits for etcd's first answer
// about a lease before giving it up.
const maxUnconfirmed = 5 * time.Second
