package etcdx

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/client/v3/concurrency"
)

// TestLifelineEndsWithTheLease: closing the session or revoking its lease
// (as etcd does when it expires) closes the lifeline; a live lease keeps it
// open.
func TestLifelineEndsWithTheLease(t *testing.T) {
	cli := startEtcd(t)
	ctx := context.Background()
	s, err := NewSession(ctx, cli, 2)
	if err != nil {
		t.Fatal(err)
	}
	line := Lifeline(s)
	if closed(line, 3*time.Second) {
		t.Fatal("lifeline closed while the lease was kept alive")
	}
	if _, err := cli.Revoke(ctx, s.Lease()); err != nil {
		t.Fatal(err)
	}
	if !closed(line, 10*time.Second) {
		t.Fatal("lifeline still open 10 s after its lease was revoked")
	}
	s.Close()

	s2, err := NewSession(ctx, cli, 2)
	if err != nil {
		t.Fatal(err)
	}
	line2 := Lifeline(s2)
	s2.Close()
	if !closed(line2, 5*time.Second) {
		t.Fatal("lifeline still open 5 s after its session closed")
	}

	// Closed or orphaned by its owner: the lifeline ends at once and
	// nothing counts as failed.
	for _, giveUp := range []func(*concurrency.Session){
		func(s *concurrency.Session) { s.Close() },
		func(s *concurrency.Session) { s.Orphan() },
	} {
		s3, err := NewSession(ctx, cli, 2)
		if err != nil {
			t.Fatal(err)
		}
		line3 := Lifeline(s3)
		failures, lost := LeaseRenewalFailures(), LeasesLost()
		giveUp(s3)
		if !closed(line3, time.Second) {
			t.Fatal("lifeline still open 1 s after its owner gave the session up")
		}
		if f, l := LeaseRenewalFailures()-failures, LeasesLost()-lost; f != 0 || l != 0 {
			t.Errorf("a session given up by its owner counted %d failed renewals and %d lost leases, want none", f, l)
		}
		s3.Close()
	}
}

// TestLifelineSurvivesAFailedRenewal holds back every answer etcd sends
// the client for longer than the lease TTL while the client's keepalives
// still reach etcd: the lease stays alive on the server, but the client
// gives up on its keepalive, as it does while etcd elects a new leader.
// The lifeline must count the failed renewal, keep the lease alive again
// once answers flow, and stay open; the registration bound to the lease
// must outlive several TTLs after that.
func TestLifelineSurvivesAFailedRenewal(t *testing.T) {
	direct := startEtcd(t)
	ctx := context.Background()
	p := startMuteProxy(t, direct.Endpoints()[0])
	cli, err := Dial(ctx, []string{p.addr()}, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	k := mustKeys(t, "renewal")
	// On a loaded machine a 2 s lease's keepalive can already have been
	// given up before Lifeline is called; a lifeline then gives the lease
	// up at once (it cannot tell that from its owner closing the
	// session), which is not the case under test: start again.
	var s *concurrency.Session
	var line <-chan struct{}
	for attempt := 1; ; attempt++ {
		var err error
		if s, err = NewSession(ctx, cli, testTTL); err != nil {
			t.Fatal(err)
		}
		if err := Register(ctx, s, k, Member{Name: "w0", Addr: "127.0.0.1:1"}); err != nil {
			t.Fatal(err)
		}
		line = Lifeline(s)
		if !isClosed(s.Done()) {
			break
		}
		s.Close() // revokes the lease and the registration with it
		if attempt == 5 {
			t.Fatal("the session's keepalive ended before its lifeline started, 5 times in a row")
		}
		t.Logf("attempt %d: the session's keepalive ended before its lifeline started; starting again", attempt)
	}
	t.Cleanup(func() { s.Close() })
	failures, lost := LeaseRenewalFailures(), LeasesLost()

	p.mute(true)
	deadline := time.Now().Add(10 * time.Second)
	for LeaseRenewalFailures() == failures {
		if time.Now().After(deadline) {
			p.mute(false)
			t.Fatal("no failed renewal counted 10 s after etcd's answers stopped")
		}
		time.Sleep(50 * time.Millisecond)
	}
	// The client closes the lifeline's keepalive and the session's
	// together; the session's goroutine may notice its own a moment
	// after the lifeline counted the failure.
	if !closed(s.Done(), 2*time.Second) {
		t.Error("a renewal was counted as failed but the session's keepalive is still running 2 s later")
	}
	p.mute(false)

	// Several TTLs with no one else renewing the lease: only a keepalive
	// the lifeline re-established keeps the registration.
	select {
	case <-line:
		t.Fatalf("lifeline ended after one failed renewal (leases lost: %d more)", LeasesLost()-lost)
	case <-time.After(4 * testTTL * time.Second):
	}
	ms, _, err := Members(ctx, direct, k)
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 1 || ms[0].Lease != int64(s.Lease()) {
		t.Fatalf("registration gone after a survived renewal failure: %s", names(ms))
	}
	ttl, err := direct.TimeToLive(ctx, s.Lease())
	if err != nil {
		t.Fatal(err)
	}
	if ttl.TTL <= 0 {
		t.Fatalf("lease %x has TTL %d after the lifeline re-established it", s.Lease(), ttl.TTL)
	}
	if got := LeaseRenewalFailures() - failures; got < 1 {
		t.Errorf("renewal failures went up by %d, want at least 1", got)
	}
	if got := LeasesLost() - lost; got != 0 {
		t.Errorf("leases lost went up by %d, want 0", got)
	}
}

// muteProxy forwards TCP between a client and etcd; muted, it holds back
// everything etcd sends (without dropping it) while the client's requests
// still go through.
type muteProxy struct {
	l  net.Listener
	mu sync.Mutex
	// open is closed while the proxy forwards answers; muting replaces it.
	open chan struct{}
}

func startMuteProxy(t *testing.T, upstream string) *muteProxy {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &muteProxy{l: l, open: make(chan struct{})}
	close(p.open)
	var wg sync.WaitGroup
	var conns []net.Conn
	var connsMu sync.Mutex
	t.Cleanup(func() {
		l.Close()
		p.mute(false)
		connsMu.Lock()
		for _, c := range conns {
			c.Close()
		}
		connsMu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", upstream)
			if err != nil {
				c.Close()
				continue
			}
			connsMu.Lock()
			conns = append(conns, c, u)
			connsMu.Unlock()
			wg.Add(2)
			go func() { defer wg.Done(); p.pipe(u, c, false) }()
			go func() { defer wg.Done(); p.pipe(c, u, true) }()
		}
	}()
	return p
}

func (p *muteProxy) addr() string { return p.l.Addr().String() }

// mute holds back (true) or releases (false) etcd's answers.
func (p *muteProxy) mute(on bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.open:
		if on {
			p.open = make(chan struct{})
		}
	default:
		if !on {
			close(p.open)
		}
	}
}

// pipe copies src to dst; answers wait while the proxy is muted.
func (p *muteProxy) pipe(dst, src net.Conn, answers bool) {
	defer dst.Close()
	defer src.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if answers {
				p.mu.Lock()
				open := p.open
				p.mu.Unlock()
				<-open
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// closed reports whether ch closes within the given time.
func closed(ch <-chan struct{}, within time.Duration) bool {
	select {
	case <-ch:
		return true
	case <-time.After(within):
		return false
	}
}

func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}
