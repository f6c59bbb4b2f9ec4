package etcdx

import (
	"context"
	"testing"
	"time"
)

// TestLifelineEndsWithTheLease: closing the session or revoking its lease
// (as etcd does when it expires) closes the lifeline; a live lease keeps it
// open.
func TestLifelineEndsWithTheLease(t *testing.T) {
	cli := startEtcd(t)
	ctx := context.Background()
	closed := func(ch <-chan struct{}, within time.Duration) bool {
		select {
		case <-ch:
			return true
		case <-time.After(within):
			return false
		}
	}

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
}
