package liveness

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"stagecoach/internal/etcdx"
)

func startEtcd(t *testing.T) *clientv3.Client {
	t.Helper()
	ctx := context.Background()
	e, err := etcdx.StartEmbedded(ctx, etcdx.EmbedConfig{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	cli, err := etcdx.Dial(ctx, e.Endpoints(), 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// leaseOf returns the lease the member key is held under (0: no key).
func leaseOf(t *testing.T, cli *clientv3.Client, keys etcdx.Keys, name string) int64 {
	t.Helper()
	resp, err := cli.Get(context.Background(), keys.Member(name))
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) == 0 {
		return 0
	}
	return resp.Kvs[0].Lease
}

// TestKeepRegistersAgainAndRevokesOnStop registers a worker, revokes its
// lease from outside (as an etcd that lost it would), and requires Keep to
// register again under a new lease; stopping revokes the lease at once.
func TestKeepRegistersAgainAndRevokesOnStop(t *testing.T) {
	cli := startEtcd(t)
	keys, err := etcdx.NewKeys("job1")
	if err != nil {
		t.Fatal(err)
	}
	leases := make(chan int64, 4)
	var registered atomic.Bool
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Keep(ctx, cli, keys, etcdx.Member{Name: "w1", Addr: "127.0.0.1:7001"},
			Options{TTL: 2, Retry: 50 * time.Millisecond, Registered: &registered, OnRegistered: func(l int64) { leases <- l }})
	}()
	first := <-leases
	if got := leaseOf(t, cli, keys, "w1"); got != first {
		t.Fatalf("member key under lease %x, want %x", got, first)
	}
	if !registered.Load() {
		t.Fatal("Registered is false while registered")
	}
	if _, err := cli.Revoke(context.Background(), clientv3.LeaseID(first)); err != nil {
		t.Fatal(err)
	}
	select {
	case second := <-leases:
		if second == first {
			t.Fatalf("registered again under the revoked lease %x", first)
		}
		if got := leaseOf(t, cli, keys, "w1"); got != second {
			t.Fatalf("member key under lease %x, want %x", got, second)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("not registered again after the lease was revoked")
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Keep after stop: %v", err)
	}
	if got := leaseOf(t, cli, keys, "w1"); got != 0 {
		t.Fatalf("member key still there (lease %x) after a clean stop", got)
	}
	if registered.Load() {
		t.Fatal("Registered is true after stop")
	}
}

// TestKeepCrashedLeavesTheLease: a crash leaves the key until its TTL.
func TestKeepCrashedLeavesTheLease(t *testing.T) {
	cli := startEtcd(t)
	keys, _ := etcdx.NewKeys("job2")
	leases := make(chan int64, 1)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Keep(ctx, cli, keys, etcdx.Member{Name: "w1", Addr: "127.0.0.1:7001"},
			Options{TTL: 2, Crashed: func() bool { return true }, OnRegistered: func(l int64) { leases <- l }})
	}()
	l := <-leases
	cancel()
	<-done
	if got := leaseOf(t, cli, keys, "w1"); got != l {
		t.Fatalf("after a crash the key is under lease %x, want %x until the TTL", got, l)
	}
}

// TestKeepGivesUp: with etcd unreachable Keep returns an error naming the
// worker once the rejoin timeout has passed, instead of retrying forever.
func TestKeepGivesUp(t *testing.T) {
	ctx := context.Background()
	e, err := etcdx.StartEmbedded(ctx, etcdx.EmbedConfig{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	cli, err := etcdx.Dial(ctx, e.Endpoints(), 0)
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	e.Close()
	keys, _ := etcdx.NewKeys("job3")
	err = Keep(ctx, cli, keys, etcdx.Member{Name: "w9", Addr: "127.0.0.1:7001"}, Options{TTL: 2, Rejoin: 300 * time.Millisecond, Retry: 50 * time.Millisecond})
	if err == nil {
		t.Fatal("Keep returned nil with etcd gone")
	}
	if want := "worker w9"; !strings.Contains(err.Error(), want) {
		t.Fatalf("error %q does not name %q", err, want)
	}
}
