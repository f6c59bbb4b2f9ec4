package etcdx

import (
	"context"
	"testing"
	"time"
)

// LeaderWatch follows the election: no leader, then the first candidate,
// not a queued second one, then the second after the first resigns; and
// Refresh sees a new leader before the watch would.
func TestLeaderWatchFollowsElection(t *testing.T) {
	cli := startEtcd(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	k := mustKeys(t, "job1")
	w, err := WatchLeader(ctx, cli, k)
	if err != nil {
		t.Fatal(err)
	}
	if r := w.LeaderRev(); r != 0 {
		t.Fatalf("no campaign yet, leader revision %d", r)
	}
	waitRev := func(want int64, what string) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for w.LeaderRev() != want {
			if time.Now().After(deadline) {
				t.Fatalf("%s: watched leader revision %d, want %d", what, w.LeaderRev(), want)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	sa, _ := NewSession(ctx, cli, testTTL)
	sb, _ := NewSession(ctx, cli, testTTL)
	defer sb.Close()
	a, err := Campaign(ctx, sa, k, "a")
	if err != nil {
		t.Fatal(err)
	}
	waitRev(a.Rev(), "first leader")
	// Another job's election is not this one's.
	other, _ := NewSession(ctx, cli, testTTL)
	defer other.Close()
	if _, err := Campaign(ctx, other, mustKeys(t, "job2"), "x"); err != nil {
		t.Fatal(err)
	}
	won := make(chan *Leader, 1)
	go func() {
		b, err := Campaign(ctx, sb, k, "b")
		if err != nil {
			t.Error(err)
		}
		won <- b
	}()
	time.Sleep(300 * time.Millisecond) // b's key is queued behind a's
	if r, err := w.Refresh(ctx); err != nil || r != a.Rev() {
		t.Fatalf("with a candidate queued: Refresh = %d, %v; want the leader's %d", r, err, a.Rev())
	}
	if err := a.Resign(ctx); err != nil {
		t.Fatal(err)
	}
	b := <-won
	if b == nil {
		t.FailNow()
	}
	if r, err := w.Refresh(ctx); err != nil || r != b.Rev() {
		t.Fatalf("after the first resigned: Refresh = %d, %v; want %d", r, err, b.Rev())
	}
	waitRev(b.Rev(), "second leader")
	sb.Close()
	waitRev(0, "no leader")
}

// TestLeaderWatchChanges: Changes' channel closes when a read shows
// another leader (or none), not when it shows the same one; and a read
// made at an older store revision than the one held (a slow Refresh
// overtaken by the watch) changes nothing, so it cannot bring back a
// replaced leader.
func TestLeaderWatchChanges(t *testing.T) {
	w := &LeaderWatch{changed: make(chan struct{})}
	closed := func(ch <-chan struct{}) bool {
		select {
		case <-ch:
			return true
		default:
			return false
		}
	}
	_, ch := w.Changes()
	w.store(5, 10)
	rev, ch2 := w.Changes()
	if !closed(ch) || rev != 5 {
		t.Fatalf("after a new leader: revision %d, channel closed %v", rev, closed(ch))
	}
	w.store(3, 9) // read before the one above
	w.store(5, 11)
	if rev, _ := w.Changes(); closed(ch2) || rev != 5 {
		t.Fatalf("after an older read and the same leader: revision %d, channel closed %v", rev, closed(ch2))
	}
	w.store(0, 12)
	if rev, _ := w.Changes(); !closed(ch2) || rev != 0 {
		t.Fatalf("after the leader left: revision %d, channel closed %v", rev, closed(ch2))
	}
}
