package etcdx

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
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
	return DialTLS(ctx, endpoints, timeout, nil)
}

// DialTLS is Dial over TLS when tc is set (a node's config from
// tlsx.Load): the client presents tc's certificate, as etcd's
// --client-cert-auth demands, and verifies etcd's against tc's CA.
// Endpoints are then https: a bare host:port is dialled as
// https://host:port, and an http:// endpoint is refused (etcd's client
// would silently drop TLS for it). A nil tc is Dial.
func DialTLS(ctx context.Context, endpoints []string, timeout time.Duration, tc *tls.Config) (*clientv3.Client, error) {
	if len(endpoints) == 0 {
		return nil, errors.New("etcdx: no etcd endpoints")
	}
	if timeout == 0 {
		timeout = 5 * time.Second
	}
	if tc != nil {
		eps := make([]string, len(endpoints))
		for i, ep := range endpoints {
			switch {
			case strings.HasPrefix(ep, "http://"):
				return nil, fmt.Errorf("etcdx: endpoint %s is plaintext (http://) but TLS is on: use https:// or host:port", ep)
			case !strings.Contains(ep, "://"):
				ep = "https://" + ep
			}
			eps[i] = ep
		}
		endpoints, tc = eps, tc.Clone()
	}
	// The client's own logger warns on every retried call; errors reach
	// the caller anyway, so it stays silent.
	cli, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: timeout, TLS: tc, Logger: zap.NewNop()})
	if err != nil {
		return nil, fmt.Errorf("etcdx: connect to %s: %w", strings.Join(endpoints, ","), err)
	}
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	// A read of an absent key proves a quorum answers. With etcd auth on
	// most users may not read it, but etcd refuses only after the
	// linearizable read's quorum round, so a refusal proves it too.
	if _, err := cli.Get(cctx, Root+"\x00probe"); err != nil && !errors.Is(err, rpctypes.ErrPermissionDenied) {
		cli.Close()
		why := ""
		if tc != nil {
			// The client waits for a connection until its deadline and
			// says only that; a bare handshake tells a refused
			// certificate from an absent server.
			if herr := handshake(endpoints[0], tc); herr != nil {
				why = fmt.Sprintf(" (TLS handshake with %s: %v)", endpoints[0], herr)
			}
		}
		return nil, fmt.Errorf("etcdx: etcd at %s does not answer: %w%s", strings.Join(endpoints, ","), err, why)
	}
	return cli, nil
}

// handshake runs a TLS handshake with an https endpoint and reads once: a
// TLS 1.3 server refuses a client certificate in an alert after the
// client's side of the handshake is done. It returns nil when the server
// accepted (the read then times out waiting for the client to speak).
func handshake(endpoint string, tc *tls.Config) error {
	host := strings.TrimPrefix(endpoint, "https://")
	c := tc.Clone()
	c.NextProtos = []string{"h2"}
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: time.Second}, "tcp", host, c)
	if err != nil {
		return err
	}
	defer conn.Close()
	if err := conn.SetReadDeadline(time.Now().Add(time.Second)); err != nil {
		return nil
	}
	var ne net.Error
	if _, err := conn.Read(make([]byte, 1)); err != nil && !(errors.As(err, &ne) && ne.Timeout()) {
		return err
	}
	return nil
}

// NewSession grants a lease of ttl seconds (0 means DefaultTTL) and keeps it
// alive until Close or CloseSession. The session ends (Done closes) when
// the lease cannot be renewed before it expires; everything bound to it is
// then gone.
//
// The grant runs under ctx, bounded by the TTL: a process told to stop
// while etcd does not answer returns at once instead of waiting in the
// grant. The keepalive is detached from ctx's cancellation: a process
// stopping on a signal must still revoke its lease (CloseSession), so its
// keys vanish at once instead of a TTL later.
func NewSession(ctx context.Context, cli *clientv3.Client, ttl int) (*concurrency.Session, error) {
	if ttl == 0 {
		ttl = DefaultTTL
	}
	if ttl < MinTTL {
		return nil, fmt.Errorf("etcdx: lease TTL %d s is below etcd's minimum of %d s", ttl, MinTTL)
	}
	gctx, cancel := context.WithTimeout(ctx, time.Duration(ttl)*time.Second)
	g, err := cli.Grant(gctx, int64(ttl))
	cancel()
	if err != nil {
		return nil, fmt.Errorf("etcdx: grant a %d s lease: %w", ttl, err)
	}
	s, err := concurrency.NewSession(cli, concurrency.WithTTL(ttl), concurrency.WithLease(g.ID),
		concurrency.WithContext(context.WithoutCancel(ctx)))
	if err != nil {
		revoke(cli, g.ID, RevokeTimeout)
		return nil, fmt.Errorf("etcdx: keep the %d s lease %x alive: %w", ttl, g.ID, err)
	}
	return s, nil
}

// RevokeTimeout bounds the revocation of a stopping process's lease: past
// it the lease is left to expire on its own.
const RevokeTimeout = 500 * time.Millisecond

// CloseSession stops keeping s's lease alive and revokes it, waiting at
// most timeout (RevokeTimeout when 0) for etcd to answer, so that a
// process stopping while etcd is unreachable is not held up. A nil s is
// no session: nothing to do.
// concurrency.Session.Close waits up to a whole TTL.
func CloseSession(s *concurrency.Session, timeout time.Duration) error {
	if s == nil {
		return nil
	}
	if timeout <= 0 {
		timeout = RevokeTimeout
	}
	s.Orphan()
	return revoke(s.Client(), s.Lease(), timeout)
}

func revoke(cli *clientv3.Client, id clientv3.LeaseID, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(cli.Ctx(), timeout)
	defer cancel()
	if _, err := cli.Revoke(ctx, id); err != nil {
		return fmt.Errorf("etcdx: revoke lease %x: %w", id, err)
	}
	return nil
}
