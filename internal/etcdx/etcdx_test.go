package etcdx

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// testTTL is the smallest lease etcd grants, so expiry tests stay short.
const testTTL = 2

func startEtcd(t *testing.T) *clientv3.Client {
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
	return cli
}

func mustKeys(t *testing.T, job string) Keys {
	t.Helper()
	k, err := NewKeys(job)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// waitFor reads snapshots from ch until ok accepts one or 15 s pass.
func waitFor(t *testing.T, ch <-chan []Member, what string, ok func([]Member) bool) {
	t.Helper()
	deadline := time.After(15 * time.Second)
	for {
		select {
		case ms, open := <-ch:
			if !open {
				t.Fatalf("watch closed waiting for %s", what)
			}
			if ok(ms) {
				return
			}
		case <-deadline:
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

func names(ms []Member) string {
	s := ""
	for _, m := range ms {
		s += m.Name + "@" + m.Addr + " "
	}
	return s
}

func TestEmbeddedCloseTwice(t *testing.T) {
	e, err := StartEmbedded(context.Background(), EmbedConfig{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	e.Close()
	e.Close() // embed.Etcd.Close would panic here
}

func TestMembershipFollowsLease(t *testing.T) {
	cli := startEtcd(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	k := mustKeys(t, "job1")
	ch := WatchMembers(ctx, cli, k)
	waitFor(t, ch, "empty membership", func(ms []Member) bool { return len(ms) == 0 })

	s1, err := NewSession(ctx, cli, testTTL)
	if err != nil {
		t.Fatal(err)
	}
	s2, err := NewSession(ctx, cli, testTTL)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if err := Register(ctx, s1, k, Member{Name: "w1", Addr: "127.0.0.1:1"}); err != nil {
		t.Fatal(err)
	}
	if err := Register(ctx, s2, k, Member{Name: "w2", Addr: "127.0.0.1:2"}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, ch, "w1 and w2", func(ms []Member) bool { return names(ms) == "w1@127.0.0.1:1 w2@127.0.0.1:2 " })

	// A crashed worker stops renewing: its key must vanish within the TTL
	// (plus etcd's expiry granularity).
	start := time.Now()
	s1.Orphan()
	waitFor(t, ch, "w1 to expire", func(ms []Member) bool { return names(ms) == "w2@127.0.0.1:2 " })
	if d := time.Since(start); d > (testTTL+3)*time.Second {
		t.Errorf("lease expiry took %v with TTL %d s", d, testTTL)
	}

	ms, err := WaitMembers(ctx, cli, k, 1)
	if err != nil || len(ms) != 1 || ms[0].Name != "w2" {
		t.Fatalf("WaitMembers = %v, %v", ms, err)
	}
}

func TestRestartUnderSameNameKeepsNewRegistration(t *testing.T) {
	cli := startEtcd(t)
	ctx := context.Background()
	k := mustKeys(t, "job1")
	old, _ := NewSession(ctx, cli, testTTL)
	cur, _ := NewSession(ctx, cli, testTTL)
	defer cur.Close()
	if err := Register(ctx, old, k, Member{Name: "w", Addr: "old:1"}); err != nil {
		t.Fatal(err)
	}
	if err := Register(ctx, cur, k, Member{Name: "w", Addr: "new:1"}); err != nil {
		t.Fatal(err)
	}
	old.Close() // revokes the old lease: must not take the new key along
	ms, _, err := Members(ctx, cli, k)
	if err != nil || len(ms) != 1 || ms[0].Addr != "new:1" || ms[0].Lease != int64(cur.Lease()) {
		t.Fatalf("members = %+v, %v; want only the new registration", ms, err)
	}
}

func TestSecondCandidateWinsOnlyAfterFirstResigns(t *testing.T) {
	cli := startEtcd(t)
	ctx := context.Background()
	k := mustKeys(t, "job1")
	sa, _ := NewSession(ctx, cli, testTTL)
	sb, _ := NewSession(ctx, cli, testTTL)
	defer sb.Close()
	a, err := Campaign(ctx, sa, k, "a")
	if err != nil {
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
	select {
	case <-won:
		t.Fatal("second candidate won while the first leads")
	case <-time.After(500 * time.Millisecond):
	}
	if err := a.Resign(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case b := <-won:
		if b == nil {
			t.FailNow()
		}
		if b.Rev() <= a.Rev() {
			t.Errorf("new leader's fencing token %d is not above the old %d", b.Rev(), a.Rev())
		}
		if err := b.PutJSON(ctx, k.Plan(1), map[string]int{"epoch": 1}); err != nil {
			t.Errorf("new leader cannot write: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("second candidate did not win after the first resigned")
	}
	if err := a.PutJSON(ctx, k.Plan(2), 1); !errors.Is(err, ErrDeposed) {
		t.Errorf("resigned leader's write: got %v, want ErrDeposed", err)
	}
}

func TestDeadLeaderIsReplacedAndFenced(t *testing.T) {
	cli := startEtcd(t)
	ctx := context.Background()
	k := mustKeys(t, "job1")
	sa, _ := NewSession(ctx, cli, testTTL)
	a, err := Campaign(ctx, sa, k, "a")
	if err != nil {
		t.Fatal(err)
	}
	if want := fmt.Sprintf("%s%x", k.ElectionPrefix(), sa.Lease()); string(a.elec.Key()) != want {
		t.Fatalf("election key %q, want %q", a.elec.Key(), want)
	}
	commA, err := NewCommitter(ctx, a)
	if err != nil {
		t.Fatal(err)
	}
	if err := commA.Commit(ctx, Commit{Step: 1, Epoch: 1}); err != nil {
		t.Fatal(err)
	}
	// Leader "hangs": it stops renewing but keeps its handle (SIGSTOP).
	sa.Orphan()
	sb, _ := NewSession(ctx, cli, testTTL)
	defer sb.Close()
	start := time.Now()
	b, err := Campaign(ctx, sb, k, "b")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("standby won %v after the leader stopped renewing", time.Since(start).Round(time.Millisecond))
	select {
	case <-a.Done():
	case <-time.After(10 * time.Second):
		t.Error("deposed leader's session never reported done")
	}
	if err := commA.Commit(ctx, Commit{Step: 2, Epoch: 1}); !errors.Is(err, ErrDeposed) {
		t.Fatalf("deposed leader's commit: got %v, want ErrDeposed", err)
	}
	commB, err := NewCommitter(ctx, b)
	if err != nil {
		t.Fatal(err)
	}
	if commB.Last().Step != 1 {
		t.Fatalf("new leader resumes from step %d, want 1", commB.Last().Step)
	}
	if err := commB.Commit(ctx, Commit{Step: 2, Epoch: 2}); err != nil {
		t.Fatal(err)
	}
	cs, err := Commits(ctx, cli, k)
	if err != nil {
		t.Fatal(err)
	}
	if err := CheckSequence(cs); err != nil || len(cs) != 2 || cs[1].LeaderRev != b.Rev() {
		t.Fatalf("commits %+v: %v", cs, err)
	}
}

func TestCommitRefusesGapsDuplicatesAndRaces(t *testing.T) {
	cli := startEtcd(t)
	ctx := context.Background()
	k := mustKeys(t, "job1")
	s, _ := NewSession(ctx, cli, testTTL)
	defer s.Close()
	l, err := Campaign(ctx, s, k, "a")
	if err != nil {
		t.Fatal(err)
	}
	c1, _ := NewCommitter(ctx, l)
	stale, _ := NewCommitter(ctx, l)
	for step := int64(1); step <= 3; step++ {
		if err := c1.Commit(ctx, Commit{Step: step, Epoch: 1, Loss: float64(step)}); err != nil {
			t.Fatal(err)
		}
	}
	if err := c1.Commit(ctx, Commit{Step: 5}); err == nil {
		t.Error("commit of step 5 after 3 succeeded")
	}
	if err := c1.Commit(ctx, Commit{Step: 3}); err == nil {
		t.Error("second commit of step 3 succeeded")
	}
	// A committer that missed steps 1..3 must not write step 1 again.
	if err := stale.Commit(ctx, Commit{Step: 1}); !errors.Is(err, ErrConflict) {
		t.Errorf("stale committer: got %v, want ErrConflict", err)
	}
	cs, _ := Commits(ctx, cli, k)
	if err := CheckSequence(cs); err != nil || len(cs) != 3 {
		t.Fatalf("commits %+v: %v", cs, err)
	}
	if err := CheckSequence([]Commit{{Step: 1}, {Step: 3}}); err == nil {
		t.Error("CheckSequence accepted a gap")
	}
}

func TestJobsDoNotSeeEachOther(t *testing.T) {
	cli := startEtcd(t)
	ctx := context.Background()
	// "a" is a prefix of "ab": the trailing slash must keep them apart.
	ka, kb := mustKeys(t, "a"), mustKeys(t, "ab")
	s, _ := NewSession(ctx, cli, testTTL)
	defer s.Close()
	for i, k := range []Keys{ka, kb} {
		if err := Register(ctx, s, k, Member{Name: fmt.Sprintf("w%d", i), Addr: "x:1"}); err != nil {
			t.Fatal(err)
		}
	}
	la, err := Campaign(ctx, s, ka, "leader-a")
	if err != nil {
		t.Fatal(err)
	}
	// The same session leads both jobs: elections are per job.
	lb, err := Campaign(ctx, s, kb, "leader-b")
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := NewCommitter(ctx, la)
	cb, _ := NewCommitter(ctx, lb)
	if err := ca.Commit(ctx, Commit{Step: 1}); err != nil {
		t.Fatal(err)
	}
	if err := cb.Commit(ctx, Commit{Step: 1}); err != nil {
		t.Fatal(err)
	}
	for i, k := range []Keys{ka, kb} {
		ms, _, _ := Members(ctx, cli, k)
		if len(ms) != 1 || ms[0].Name != fmt.Sprintf("w%d", i) {
			t.Errorf("job %s sees members %+v", k.Job(), ms)
		}
		cs, _ := Commits(ctx, cli, k)
		if len(cs) != 1 {
			t.Errorf("job %s sees %d commits, want 1", k.Job(), len(cs))
		}
	}
}

func TestValidateJob(t *testing.T) {
	for _, ok := range []string{"a", "job-1", "A.b_c", "x123"} {
		if err := ValidateJob(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for _, bad := range []string{"", ".", "..", "a/b", "a b", "j\x00", string(make([]byte, 65))} {
		if err := ValidateJob(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	if _, err := NewKeys("a/../b"); err == nil {
		t.Error("NewKeys accepted a slash")
	}
}

// A watcher that was away while the history it needs was compacted
// re-reads the prefix and converges to the current membership.
func TestWatchRereadsAfterCompaction(t *testing.T) {
	cli := startEtcd(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	k := mustKeys(t, "job1")
	s1, _ := NewSession(ctx, cli, testTTL)
	s2, _ := NewSession(ctx, cli, testTTL)
	defer s2.Close()
	if err := Register(ctx, s1, k, Member{Name: "w1", Addr: "a:1"}); err != nil {
		t.Fatal(err)
	}
	ms, rev, err := Members(ctx, cli, k)
	if err != nil || len(ms) != 1 {
		t.Fatalf("members %v, %v", ms, err)
	}
	// While "away": w2 joins, w1 leaves, other keys move on, and the
	// history is compacted past rev.
	if err := Register(ctx, s2, k, Member{Name: "w2", Addr: "b:1"}); err != nil {
		t.Fatal(err)
	}
	s1.Close()
	resp, err := cli.Put(ctx, "/elsewhere", "x")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Compact(ctx, resp.Header.Revision); err != nil {
		t.Fatal(err)
	}
	stale := map[string]Member{"w1": ms[0]}
	ch := watchMembers(ctx, cli, k, stale, rev)
	waitFor(t, ch, "w2 only after re-reading", func(ms []Member) bool { return names(ms) == "w2@b:1 " })
}

// TestCommitterAfterBase: a job started from the state after step 4
// commits from step 5; a later leader finds its commits from there, also
// without the iteration key (the run of records from step 5), and a
// start past the committed steps is refused.
func TestCommitterAfterBase(t *testing.T) {
	cli := startEtcd(t)
	ctx := context.Background()
	k := mustKeys(t, "init")
	sa, _ := NewSession(ctx, cli, testTTL)
	a, err := Campaign(ctx, sa, k, "a")
	if err != nil {
		t.Fatal(err)
	}
	c, err := NewCommitterAfter(ctx, a, 4)
	if err != nil {
		t.Fatal(err)
	}
	if c.Last().Step != 4 {
		t.Fatalf("a job after step 4 starts at last step %d", c.Last().Step)
	}
	if err := c.Commit(ctx, Commit{Step: 1, Epoch: 1}); err == nil {
		t.Fatal("commit of step 1 after step 4 succeeded")
	}
	for step := int64(5); step <= 6; step++ {
		if err := c.Commit(ctx, Commit{Step: step, Epoch: 1}); err != nil {
			t.Fatal(err)
		}
	}
	if _, _, err := c.Record(ctx, 4); err == nil {
		t.Error("the record of step 4, the job's start, read as committed")
	}
	if r, ok, err := c.Record(ctx, 5); err != nil || !ok || r.Step != 5 {
		t.Errorf("record of step 5: %+v %v %v", r, ok, err)
	}
	if err := a.Resign(ctx); err != nil {
		t.Fatal(err)
	}
	sa.Close()
	sb, _ := NewSession(ctx, cli, testTTL)
	defer sb.Close()
	b, err := Campaign(ctx, sb, k, "b")
	if err != nil {
		t.Fatal(err)
	}
	if cb, err := NewCommitterAfter(ctx, b, 4); err != nil || cb.Last().Step != 6 {
		t.Fatalf("the next leader: %v, last step %+v", err, cb)
	}
	if _, err := NewCommitterAfter(ctx, b, 6); err == nil || !strings.Contains(err.Error(), "use a new job id") {
		t.Errorf("a start after the last committed step: %v", err)
	}
	if _, err := cli.Delete(ctx, k.Iteration()); err != nil {
		t.Fatal(err)
	}
	if cb, err := NewCommitterAfter(ctx, b, 4); err != nil || cb.Last().Step != 6 {
		t.Fatalf("from the records alone: %v, last step %+v", err, cb)
	}
	if c0, err := NewCommitter(ctx, b); err != nil || c0.Last().Step != 0 {
		t.Fatalf("from step 0, records from step 5 are no run: %v, %+v", err, c0)
	}
}

// TestStartEmbeddedPicksAgainWhenAPortIsTaken takes the first port
// StartEmbedded picks before etcd can bind it (as another process may):
// the start must pick again and serve, not fail.
func TestStartEmbeddedPicksAgainWhenAPortIsTaken(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	picks := 0
	pickURL = func() (string, error) {
		picks++
		if picks == 1 {
			return "http://" + taken.Addr().String(), nil
		}
		return freeLoopbackURL()
	}
	defer func() { pickURL = freeLoopbackURL }()
	e, err := StartEmbedded(context.Background(), EmbedConfig{Dir: t.TempDir()})
	if err != nil {
		t.Fatalf("start with the first picked port taken: %v", err)
	}
	defer e.Close()
	if picks < 4 {
		t.Fatalf("%d ports picked, want a second pair after the taken one", picks)
	}
	if got := e.Endpoints()[0]; got == taken.Addr().String() {
		t.Fatalf("etcd serves on the taken port %s", got)
	}
}
