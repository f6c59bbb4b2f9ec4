package etcdx

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// warnings collects what SetWarnf reports during a test.
type warnings struct {
	mu    sync.Mutex
	lines []string
}

func collectWarnings(t *testing.T) *warnings {
	w := &warnings{}
	SetWarnf(func(format string, args ...any) {
		w.mu.Lock()
		defer w.mu.Unlock()
		w.lines = append(w.lines, fmt.Sprintf(format, args...))
	})
	t.Cleanup(func() { SetWarnf(nil) })
	return w
}

func (w *warnings) has(sub string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, l := range w.lines {
		if strings.Contains(l, sub) {
			return true
		}
	}
	return false
}

// Registrations that are not what a worker writes are ignored, counted
// and reported, by a read and by the watch; good ones are kept.
func TestForgedMembersIgnored(t *testing.T) {
	cli := startEtcd(t)
	ctx := context.Background()
	k := mustKeys(t, "job1")
	warn := collectWarnings(t)
	s, _ := NewSession(ctx, cli, testTTL)
	defer s.Close()
	if err := Register(ctx, s, k, Member{Name: "good", Addr: "127.0.0.1:7000", Capacity: 2, Speed: 10}); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []Member{{Name: "w", Addr: ""}, {Name: "w", Addr: "host"}, {Name: "w", Addr: "h:0"}, {Name: "w", Addr: "h:70000"},
		{Name: "w", Addr: ":1"}, {Name: "w", Addr: "h:1", Capacity: -1}, {Name: "w", Addr: "h:1", Capacity: MaxCapacity + 1},
		{Name: "w", Addr: "h:1", Speed: -1}, {Name: "w/x", Addr: "h:1"}} {
		if err := Register(ctx, s, k, bad); err == nil {
			t.Errorf("Register accepted %+v", bad)
		}
	}
	before := Ignored(IgnoredMember)
	forged := map[string]string{
		"name-mismatch": `{"name":"good","addr":"10.0.0.1:1"}`,
		"not-json":      `{"name":`,
		"no-port":       `{"name":"no-port","addr":"10.0.0.1"}`,
		"huge-capacity": `{"name":"huge-capacity","addr":"10.0.0.1:1","capacity":1000000000}`,
		"nan":           `{"name":"nan","addr":"10.0.0.1:1","speed":1e400}`,
		"big":           `{"name":"big","addr":"10.0.0.1:1","pad":"` + strings.Repeat("x", MaxMemberBytes) + `"}`,
		"a/b":           `{"name":"a/b","addr":"10.0.0.1:1"}`,
	}
	for name, v := range forged {
		if _, err := cli.Put(ctx, k.Member(name), v); err != nil {
			t.Fatal(err)
		}
	}
	ms, _, err := Members(ctx, cli, k)
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 1 || ms[0].Name != "good" || ms[0].Addr != "127.0.0.1:7000" {
		t.Fatalf("members %s, want only good@127.0.0.1:7000", names(ms))
	}
	if n := Ignored(IgnoredMember) - before; n != uint64(len(forged)) {
		t.Errorf("%d records counted as ignored, want %d", n, len(forged))
	}
	for _, sub := range []string{"names worker \"good\" under the key of \"name-mismatch\"", "missing port", "capacity 1000000000", "over the 1024-byte limit", "not a registration"} {
		if !warn.has(sub) {
			t.Errorf("no warning says %q: %q", sub, warn.lines)
		}
	}
	// The watch ignores a forged overwrite of a real worker's key (the
	// worker is then gone, as if deleted) and a forged newcomer.
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ch := WatchMembers(wctx, cli, k)
	waitFor(t, ch, "good", func(ms []Member) bool { return len(ms) == 1 })
	if _, err := cli.Put(ctx, k.Member("fake"), `{"name":"fake","addr":"10.6.6.6:-1"}`); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Put(ctx, k.Member("good"), `{"name":"good","addr":"10.6.6.6"}`); err != nil {
		t.Fatal(err)
	}
	waitFor(t, ch, "good gone, fake not added", func(ms []Member) bool { return len(ms) == 0 })
}

// forge writes v under key without any fence, as any etcd client could
// with auth off.
func forge(t *testing.T, cli *clientv3.Client, key string, v any) {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Put(context.Background(), key, string(b)); err != nil {
		t.Fatal(err)
	}
}

// A forged iteration or commit record, during a leader's term or before
// the next one, neither moves the committed step nor blocks the next
// commit: it is ignored, counted and overwritten.
func TestForgedCommitsIgnored(t *testing.T) {
	cli := startEtcd(t)
	ctx := context.Background()
	k := mustKeys(t, "job1")
	warn := collectWarnings(t)
	s, _ := NewSession(ctx, cli, testTTL)
	l, err := Campaign(ctx, s, k, "a")
	if err != nil {
		t.Fatal(err)
	}
	c, err := NewCommitter(ctx, l)
	if err != nil {
		t.Fatal(err)
	}
	commit := func(c *Committer, step int64) {
		t.Helper()
		if err := c.Commit(ctx, Commit{Step: step, Epoch: 1, Loss: float64(step)}); err != nil {
			t.Fatalf("commit step %d: %v", step, err)
		}
	}
	for step := int64(1); step <= 3; step++ {
		commit(c, step)
	}
	its, recs := Ignored(IgnoredIteration), Ignored(IgnoredCommit)

	// The attack that killed a job: an iteration ahead of the commits,
	// naming the leader's own (leaked) revision.
	forge(t, cli, k.Iteration(), Commit{Step: 59, Epoch: 1, LeaderRev: l.Rev()})
	if err := c.Refresh(ctx); err != nil || c.Last().Step != 3 {
		t.Fatalf("after a forged iteration: last %d, %v; want 3", c.Last().Step, err)
	}
	commit(c, 4)
	// The same without a Refresh first: the commit's condition fails,
	// and it re-reads, ignores and overwrites.
	forge(t, cli, k.Iteration(), Commit{Step: 2, Epoch: 1, LeaderRev: l.Rev()})
	commit(c, 5)
	// A record waiting where the next commit goes, consistent with a
	// forged iteration in the same transaction, and naming this leader.
	b, _ := json.Marshal(Commit{Step: 6, Epoch: 1, LeaderRev: l.Rev(), Loss: 99})
	if _, err := cli.Txn(ctx).Then(clientv3.OpPut(k.Iteration(), string(b)), clientv3.OpPut(k.Commit(6), string(b))).Commit(); err != nil {
		t.Fatal(err)
	}
	commit(c, 6)
	// The iteration deleted.
	if _, err := cli.Delete(ctx, k.Iteration()); err != nil {
		t.Fatal(err)
	}
	commit(c, 7)
	// A commit whose answer was lost, and the iteration key forged after
	// it landed: re-reading finds the leader's own record and adopts it.
	lost := *c
	commit(c, 8)
	forge(t, cli, k.Iteration(), Commit{Step: 1, Epoch: 1, LeaderRev: l.Rev()})
	if err := lost.Refresh(ctx); err != nil || lost.Last().Step != 8 || lost.Last().Loss != 8 {
		t.Fatalf("after a lost answer and a forged iteration: last %+v, %v; want step 8", lost.Last(), err)
	}
	if err := c.Refresh(ctx); err != nil || c.Last().Step != 8 {
		t.Fatalf("refresh: last %d, %v; want 8", c.Last().Step, err)
	}
	if r, ok, err := c.Record(ctx, 6); err != nil || !ok || r.Loss != 6 {
		t.Errorf("record of step 6: %+v %v %v, want this leader's, loss 6", r, ok, err)
	}
	// A committed step's record rewritten is not trusted for a replay.
	forge(t, cli, k.Commit(2), Commit{Step: 2, Epoch: 1, LeaderRev: l.Rev(), Loss: 1})
	if _, ok, err := c.Record(ctx, 2); ok || err != nil {
		t.Errorf("a rewritten record of step 2 trusted (%v)", err)
	}
	if _, err := cli.Delete(ctx, k.Commit(3)); err != nil {
		t.Fatal(err)
	}
	if _, ok, err := c.Record(ctx, 3); ok || err != nil {
		t.Errorf("a deleted record of step 3 trusted (%v)", err)
	}
	if Ignored(IgnoredIteration) == its || Ignored(IgnoredCommit) == recs {
		t.Errorf("forgeries not counted: iteration %d -> %d, commit %d -> %d", its, Ignored(IgnoredIteration), recs, Ignored(IgnoredCommit))
	}
	for _, sub := range []string{"names step 59, which has no commit record", "present though step 5 is the last committed", "commits/00000000000000000002: written at revision"} {
		if !warn.has(sub) {
			t.Errorf("no warning says %q: %q", sub, warn.lines)
		}
	}

	// Between terms: the leader resigns; a forger writes an iteration
	// that is no commit, a record of step 10 after a gap and a stray key.
	// The next leader continues from the end of the trusted run of
	// records: step 1, since step 2's record was rewritten after later
	// steps were committed and step 3's is gone.
	if err := l.Resign(ctx); err != nil {
		t.Fatal(err)
	}
	s.Close()
	b, _ = json.Marshal(Commit{Step: 10, Epoch: 1, LeaderRev: l.Rev(), Loss: 1})
	if _, err := cli.Txn(ctx).Then(clientv3.OpPut(k.Iteration(), `{"step":100}`), clientv3.OpPut(k.Commit(10), string(b)), clientv3.OpPut(k.CommitsPrefix()+"0", "x")).Commit(); err != nil {
		t.Fatal(err)
	}
	s2, _ := NewSession(ctx, cli, testTTL)
	defer s2.Close()
	l2, err := Campaign(ctx, s2, k, "b")
	if err != nil {
		t.Fatal(err)
	}
	c2, err := NewCommitter(ctx, l2)
	if err != nil {
		t.Fatal(err)
	}
	// Steps 2 and 3 were tampered with above: the trusted run ends at 1.
	if c2.Last().Step != 1 {
		t.Fatalf("new leader continues from step %d, want 1 (the trusted run of records)", c2.Last().Step)
	}
	// Forgeries written after the new leader won are never trusted,
	// even when they mimic a commit.
	b, _ = json.Marshal(Commit{Step: 2, Epoch: 1, LeaderRev: l.Rev(), Loss: 2})
	if _, err := cli.Txn(ctx).Then(clientv3.OpPut(k.Iteration(), string(b)), clientv3.OpDelete(k.Commit(2)), clientv3.OpPut(k.Commit(2), string(b))).Commit(); err == nil {
		t.Fatal("a transaction putting a key twice was accepted")
	}
	if _, err := cli.Delete(ctx, k.Commit(2)); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Txn(ctx).Then(clientv3.OpPut(k.Iteration(), string(b)), clientv3.OpPut(k.Commit(2), string(b))).Commit(); err != nil {
		t.Fatal(err)
	}
	if err := c2.Refresh(ctx); err != nil || c2.Last().Step != 1 {
		t.Fatalf("after a mimicked commit in the new term: last %d, %v; want 1", c2.Last().Step, err)
	}
	if err := c2.Commit(ctx, Commit{Step: 2, Epoch: 2}); err != nil {
		t.Fatal(err)
	}
	if !warn.has("after leader") {
		t.Errorf("no warning about a record written after the leader won: %q", warn.lines)
	}
}

// The last plan epoch comes from well-formed keys up to MaxEpoch; other
// keys under the plan prefix are ignored, whatever their values.
func TestLastPlanEpochIgnoresForgedKeys(t *testing.T) {
	cli := startEtcd(t)
	ctx := context.Background()
	k := mustKeys(t, "job1")
	if e, err := LastPlanEpoch(ctx, cli, k); err != nil || e != 0 {
		t.Fatalf("no plans: epoch %d, %v", e, err)
	}
	for key, v := range map[string]string{
		k.Plan(1): `{"epoch":1}`, k.Plan(3): `not json`, k.PlanPrefix() + "zzz": `{"epoch":99}`,
		k.PlanPrefix() + "99999999999999999999": `{}`, k.Plan(MaxEpoch + 1): `{}`, k.PlanPrefix() + "7": `{}`,
	} {
		if _, err := cli.Put(ctx, key, v); err != nil {
			t.Fatal(err)
		}
	}
	before := Ignored(IgnoredPlan)
	if e, err := LastPlanEpoch(ctx, cli, k); err != nil || e != 3 {
		t.Fatalf("epoch %d, %v; want 3", e, err)
	}
	if n := Ignored(IgnoredPlan) - before; n != 4 {
		t.Errorf("%d plan keys ignored, want 4", n)
	}
}

// FuzzDecodeMember: whatever a registration's key and value hold, decoding
// neither panics nor accepts a member that CheckMember refuses or that is
// not named by its key.
func FuzzDecodeMember(f *testing.F) {
	k, _ := NewKeys("job1")
	f.Add("w0", []byte(`{"name":"w0","addr":"127.0.0.1:7000","capacity":2,"speed":3.5}`))
	f.Add("w0", []byte(`{"name":"w0","addr":"[::1]:7000"}`))
	f.Add("a/b", []byte(`{"name":"a/b","addr":"h:1"}`))
	f.Add("w1", []byte(`{"name":"w1","addr":"h:99999","capacity":-1,"speed":1e400}`))
	f.Add("w2", []byte(`{"name":`))
	f.Fuzz(func(t *testing.T, name string, val []byte) {
		m, ok := decodeMember(k, []byte(k.Member(name)), val, 7)
		if !ok {
			return
		}
		if m.Name != name || m.Lease != 7 {
			t.Fatalf("accepted %+v under the key of %q", m, name)
		}
		if err := CheckMember(m); err != nil {
			t.Fatalf("accepted %+v: %v", m, err)
		}
		if len(val) > MaxMemberBytes {
			t.Fatalf("accepted a %d-byte value", len(val))
		}
	})
}
