package etcdx

import (
	"context"
	"errors"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// startStoppable is startEtcd that also returns the server, to stop it.
func startStoppable(t *testing.T) (*Embedded, *clientv3.Client) {
	t.Helper()
	ctx := context.Background()
	e, err := StartEmbedded(ctx, EmbedConfig{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	cli, err := Dial(ctx, e.Endpoints(), 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return e, cli
}

// A process told to stop while etcd does not answer must not wait in the
// lease grant: NewSession returns the cancellation, not a grant that only
// ends when etcd comes back.
func TestNewSessionGrantIsCancellable(t *testing.T) {
	e, cli := startStoppable(t)
	e.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		// A TTL far above the test's bound: only the cancellation can
		// end the grant in time.
		s, err := NewSession(ctx, cli, 60)
		if s != nil {
			s.Orphan()
		}
		done <- err
	}()
	time.Sleep(200 * time.Millisecond)
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("NewSession against a stopped etcd, cancelled: %v, want context.Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("NewSession still granting 10 s after its context was cancelled")
	}
}

// CloseSession revokes the lease (its keys vanish at once) and, with etcd
// gone, gives up after its timeout instead of a TTL.
func TestCloseSessionRevokesAndIsBounded(t *testing.T) {
	e, cli := startStoppable(t)
	ctx := context.Background()
	k := mustKeys(t, "close")
	s, err := NewSession(ctx, cli, 60)
	if err != nil {
		t.Fatal(err)
	}
	if err := Register(ctx, s, k, Member{Name: "w0", Addr: "127.0.0.1:1"}); err != nil {
		t.Fatal(err)
	}
	if err := CloseSession(s, time.Second); err != nil {
		t.Fatalf("close a session on a live etcd: %v", err)
	}
	ms, _, err := Members(ctx, cli, k)
	if err != nil || len(ms) != 0 {
		t.Fatalf("after CloseSession the members are %v (%v), want none: the lease was not revoked", names(ms), err)
	}

	s2, err := NewSession(ctx, cli, 60)
	if err != nil {
		t.Fatal(err)
	}
	e.Close()
	done := make(chan error, 1)
	go func() { done <- CloseSession(s2, 300*time.Millisecond) }()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("CloseSession against a stopped etcd reported a revoked lease")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("CloseSession with a 300 ms timeout still waiting after 10 s (a 60 s TTL)")
	}
}
