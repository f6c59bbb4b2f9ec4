package etcdx

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"go.uber.org/zap"
)

// DefaultTTL is the session lease TTL in seconds. etcd's own default is 60
// s, far too slow to notice a dead worker; the server minimum is 2 s.
const DefaultTTL = 5

// MinTTL is the smallest TTL etcd grants.
const MinTTL = 2

// ParseEndpoints splits a comma-separated endpoint list, dropping blanks.
func ParseEndpoints(s string) []string {
	var out []string
	for _, e := range strings.Split(s, ",") {
		if e = strings.TrimSpace(e); e != "" {
			out = append(out, e)
		}
	}
	return out
}

// Dial connects to etcd and checks that it answers within timeout (default
// 5 s): clientv3.New alone succeeds even when nothing listens.
func Dial(ctx context.Context, endpoints []string, timeout time.Duration) (*clientv3.Client, error) {
	if len(endpoints) == 0 {
		return nil, errors.New("etcdx: no etcd endpoints")
	}
	if timeout == 0 {
		timeout = 5 * time.Second
	}
	// The client's own logger warns on every retried call; errors reach
	// the caller anyway, so it stays silent.
	cli, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: timeout, Logger: zap.NewNop()})
	if err != nil {
		return nil, fmt.Errorf("etcdx: connect to %s: %w", strings.Join(endpoints, ","), err)
	}
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	// A read of an absent key proves a quorum answers.
	if _, err := cli.Get(cctx, Root+"\x00probe"); err != nil {
		cli.Close()
		return nil, fmt.Errorf("etcdx: etcd at %s does not answer: %w", strings.Join(endpoints, ","), err)
	}
	return cli, nil
}

// NewSession grants a lease of ttl seconds (0 means DefaultTTL) and keeps it
// alive until Close. The session ends (Done closes) when the lease cannot be
// renewed before it expires; everything bound to it is then gone. The
// session is detached from ctx's cancellation: a process stopping on a
// signal must still revoke its lease in Close, so its keys vanish at once
// instead of a TTL later.
func NewSession(ctx context.Context, cli *clientv3.Client, ttl int) (*concurrency.Session, error) {
	ctx = context.WithoutCancel(ctx)
	if ttl == 0 {
		ttl = DefaultTTL
	}
	if ttl < MinTTL {
		return nil, fmt.Errorf("etcdx: lease TTL %d s is below etcd's minimum of %d s", ttl, MinTTL)
	}
	s, err := concurrency.NewSession(cli, concurrency.WithTTL(ttl), concurrency.WithContext(ctx))
	if err != nil {
		return nil, fmt.Errorf("etcdx: grant a %d s lease: %w", ttl, err)
	}
	return s, nil
}
