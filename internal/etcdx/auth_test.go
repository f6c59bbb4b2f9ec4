package etcdx

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"stagecoach/internal/tlsx"
)

// authEtcd is an embedded etcd serving TLS with client-certificate auth
// and a way to dial it as any user.
type authEtcd struct {
	t    *testing.T
	dir  string
	etcd *Embedded
	n    int
}

func startAuthEtcd(t *testing.T) *authEtcd {
	t.Helper()
	dir := t.TempDir()
	if _, err := tlsx.Generate(dir, []string{"etcd"}, time.Hour); err != nil {
		t.Fatal(err)
	}
	e, err := StartEmbedded(context.Background(), EmbedConfig{Dir: t.TempDir(), TLS: tlsx.FilesFor(dir, "etcd")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	return &authEtcd{t: t, dir: dir, etcd: e}
}

// dial connects with a certificate of the CA for cert: as etcd user
// root, <job>/coordinator or <job>/worker/<name>.
func (a *authEtcd) dial(cert tlsx.Cert) *clientv3.Client {
	a.t.Helper()
	cert.File = fmt.Sprintf("c%d", a.n)
	a.n++
	if _, err := tlsx.Issue(a.dir, []tlsx.Cert{cert}, time.Hour); err != nil {
		a.t.Fatal(err)
	}
	tc, err := tlsx.Load(tlsx.FilesFor(a.dir, cert.File))
	if err != nil {
		a.t.Fatal(err)
	}
	cli, err := DialTLS(context.Background(), a.etcd.Endpoints(), 5*time.Second, tc)
	if err != nil {
		a.t.Fatalf("dial as %s: %v", cert.ID.Path(), err)
	}
	a.t.Cleanup(func() { cli.Close() })
	return cli
}

// dialRoot connects as etcd's root user (a certificate with CN root).
func (a *authEtcd) dialRoot() *clientv3.Client {
	a.t.Helper()
	if _, err := tlsx.Issue(a.dir, []tlsx.Cert{{File: tlsx.RootCN}}, time.Hour); err != nil {
		a.t.Fatal(err)
	}
	tc, err := tlsx.Load(tlsx.FilesFor(a.dir, tlsx.RootCN))
	if err != nil {
		a.t.Fatal(err)
	}
	cli, err := DialTLS(context.Background(), a.etcd.Endpoints(), 5*time.Second, tc)
	if err != nil {
		a.t.Fatalf("dial as root: %v", err)
	}
	a.t.Cleanup(func() { cli.Close() })
	return cli
}

func coordinatorCert(job string) tlsx.Cert {
	id := tlsx.Coordinator(job)
	return tlsx.Cert{ID: &id}
}

func workerCert(job, name string) tlsx.Cert {
	id := tlsx.Worker(job, name)
	return tlsx.Cert{ID: &id}
}

// denied tells etcd's permission refusal, as a call or a watch reports it.
func denied(err error) bool {
	return errors.Is(err, rpctypes.ErrPermissionDenied) || status.Code(err) == codes.PermissionDenied
}

// With auth set up for jobs a and b: each job's coordinator does its work
// in its own job and cannot read, watch or write the other's; a worker
// registers under its own lease, keeps it alive and revokes it, reads the
// election, and is refused everything else: another worker's
// registration (put, delete), the iteration, commit, plan and checkpoint
// keys, the leader key, and any other job.
func TestAuthPerJobAndWorker(t *testing.T) {
	ctx := context.Background()
	a := startAuthEtcd(t)
	root := a.dialRoot()
	rep, err := SetupAuth(ctx, root, AuthSpec{Job: "a", Workers: []string{"w0", "w1"}})
	if err != nil {
		t.Fatal(err)
	}
	if !rep.Enabled || len(rep.Created) != 4 || len(rep.Unexpected) != 0 {
		t.Fatalf("first setup: %+v, want auth enabled and root, a/coordinator, a/worker/w0, a/worker/w1 created", rep)
	}
	if _, err := SetupAuth(ctx, root, AuthSpec{Job: "b", Workers: []string{"w0"}}); err != nil {
		t.Fatal(err)
	}
	// Idempotent, and adds a worker joining later.
	rep, err = SetupAuth(ctx, root, AuthSpec{Job: "a", Workers: []string{"w0", "w1", "w2"}})
	if err != nil || rep.Enabled || len(rep.Created) != 1 || rep.Created[0] != "a/worker/w2" || len(rep.Unexpected) != 0 {
		t.Fatalf("setup again with w2: %+v %v", rep, err)
	}
	// Grants made by hand are reported, not undone.
	if _, err := root.UserGrantRole(ctx, WorkerUser("b", "w0"), CoordinatorUser("a")); err != nil {
		t.Fatal(err)
	}
	if _, err := root.UserGrantRole(ctx, WorkerUser("a", "w1"), WorkerUser("a", "w0")); err != nil {
		t.Fatal(err)
	}
	rep, err = SetupAuth(ctx, root, AuthSpec{Job: "a", Workers: []string{"w0", "w1", "w2"}})
	if err != nil || len(rep.Unexpected) != 2 {
		t.Fatalf("setup after grants by hand: %+v %v, want both reported", rep, err)
	}
	t.Log(rep.Unexpected)
	for u, r := range map[string]string{WorkerUser("b", "w0"): CoordinatorUser("a"), WorkerUser("a", "w1"): WorkerUser("a", "w0")} {
		if _, err := root.UserRevokeRole(ctx, u, r); err != nil {
			t.Fatal(err)
		}
	}
	ka, _ := NewKeys("a")
	kb, _ := NewKeys("b")

	// Job a's coordinator: campaign, commit, list checkpoints in its job.
	ca := a.dial(coordinatorCert("a"))
	sess, err := NewSession(ctx, ca, 2)
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	leader, err := Campaign(ctx, sess, ka, "c1")
	if err != nil {
		t.Fatal(err)
	}
	com, err := NewCommitter(ctx, leader)
	if err != nil {
		t.Fatal(err)
	}
	if err := com.Commit(ctx, Commit{Step: 1, Epoch: 1, Loss: 2}, clientv3.OpPut(ka.Checkpoint(1), "{}")); err != nil {
		t.Fatalf("coordinator commit: %v", err)
	}
	if err := leader.PutJSON(ctx, ka.Plan(1), map[string]int{"epoch": 1}); err != nil {
		t.Fatal(err)
	}
	// ... and job b's keys are out of its reach.
	cb := a.dial(coordinatorCert("b"))
	if _, err := cb.Put(ctx, kb.Iteration(), "{}"); err != nil {
		t.Fatalf("job b's coordinator in job b: %v", err)
	}
	for what, err := range map[string]error{
		"get b's iteration":  get(ctx, ca, kb.Iteration()),
		"get b's prefix":     get(ctx, ca, kb.Prefix(), clientv3.WithPrefix()),
		"get everything":     get(ctx, ca, Root, clientv3.WithPrefix()),
		"put b's iteration":  put(ctx, ca, kb.Iteration(), "{}"),
		"delete b's members": del(ctx, ca, kb.MembersPrefix(), clientv3.WithPrefix()),
		"b reads a's commit": get(ctx, cb, ka.Commit(1)),
	} {
		if !denied(err) {
			t.Errorf("%s: %v, want permission denied", what, err)
		}
	}
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	wresp := <-ca.Watch(wctx, kb.Prefix(), clientv3.WithPrefix())
	// The client reports a refused watch as canceled with etcd's reason.
	if werr := wresp.Err(); !wresp.Canceled || werr == nil || !strings.Contains(werr.Error(), "permission denied") {
		t.Errorf("a's coordinator watching job b: %v (canceled %v), want permission denied", werr, wresp.Canceled)
	}

	// Worker w0 of job a.
	w0 := a.dial(workerCert("a", "w0"))
	ws, err := NewSession(ctx, w0, 2)
	if err != nil {
		t.Fatalf("a worker grants a lease: %v", err)
	}
	if err := Register(ctx, ws, ka, Member{Name: "w0", Addr: "127.0.0.1:1"}); err != nil {
		t.Fatalf("worker registers itself: %v", err)
	}
	if ttl, err := w0.TimeToLive(ctx, ws.Lease()); err != nil || ttl.TTL <= 0 {
		t.Fatalf("worker asks its lease's TTL (Lifeline does): %v %v", ttl, err)
	}
	if _, err := w0.KeepAliveOnce(ctx, ws.Lease()); err != nil {
		t.Fatalf("worker renews its lease: %v", err)
	}
	if _, err := w0.Get(ctx, ka.ElectionPrefix(), clientv3.WithPrefix()); err != nil {
		t.Fatalf("worker reads the election: %v", err)
	}
	// w1 registered by its own user: w0 can neither delete nor replace it.
	w1 := a.dial(workerCert("a", "w1"))
	ws1, err := NewSession(ctx, w1, 2)
	if err != nil {
		t.Fatal(err)
	}
	defer ws1.Close()
	if err := Register(ctx, ws1, ka, Member{Name: "w1", Addr: "127.0.0.1:2"}); err != nil {
		t.Fatal(err)
	}
	fake, _ := json.Marshal(Member{Name: "w1", Addr: "10.6.6.6:1"})
	commit, _ := json.Marshal(Commit{Step: 59, Epoch: 1, LeaderRev: leader.Rev()})
	for what, err := range map[string]error{
		"delete w1's registration":   del(ctx, w0, ka.Member("w1")),
		"register a fake w1":         put(ctx, w0, ka.Member("w1"), string(fake)),
		"register a fake w1 (lease)": putLease(ctx, w0, ka.Member("w1"), string(fake), ws.Lease()),
		"register a new name":        put(ctx, w0, ka.Member("w9"), string(fake)),
		"forge the iteration":        put(ctx, w0, ka.Iteration(), string(commit)),
		"forge a commit":             put(ctx, w0, ka.Commit(2), string(commit)),
		"delete a commit":            del(ctx, w0, ka.Commit(1)),
		"forge a checkpoint listing": put(ctx, w0, ka.Checkpoint(2), `{"dir":"/"}`),
		"forge a plan":               put(ctx, w0, ka.Plan(2), "{}"),
		"delete the leader key":      del(ctx, w0, ka.ElectionPrefix(), clientv3.WithPrefix()),
		"campaign":                   put(ctx, w0, ka.ElectionPrefix()+"x", "me"),
		"read the iteration":         get(ctx, w0, ka.Iteration()),
		"read the members":           get(ctx, w0, ka.MembersPrefix(), clientv3.WithPrefix()),
		"read job b":                 get(ctx, w0, kb.Prefix(), clientv3.WithPrefix()),
		"write job b":                put(ctx, w0, kb.Member("w0"), "{}"),
		"add a user":                 errOf(w0.UserAddWithOptions(ctx, "a/worker/w7", "", &clientv3.UserAddOptions{NoPassword: true})),
		"grant itself root":          errOf(w0.UserGrantRole(ctx, WorkerUser("a", "w0"), "root")),
	} {
		if !denied(err) {
			t.Errorf("worker w0: %s: %v, want permission denied", what, err)
		}
	}
	if _, err := w0.Revoke(ctx, ws1.Lease()); !denied(err) {
		t.Errorf("worker w0 revokes w1's lease: %v, want permission denied", err)
	}
	ms, _, err := Members(ctx, ca, ka)
	if err != nil || len(ms) != 2 || ms[1].Addr != "127.0.0.1:2" {
		t.Errorf("members after the refused forgeries: %+v %v", ms, err)
	}
	if err := ws.Close(); err != nil {
		t.Errorf("worker revokes its own lease: %v", err)
	}
	// A certificate whose CN is no user is refused everything.
	stranger := a.dial(workerCert("a", "nobody"))
	if err := get(ctx, stranger, ka.Iteration()); !denied(err) {
		t.Errorf("unknown user reads: %v", err)
	}
	// Only root changes auth once it is on.
	if _, err := SetupAuth(ctx, ca, AuthSpec{Job: "a", Workers: []string{"w3"}}); !denied(err) {
		t.Errorf("setup by the coordinator after auth is on: %v, want permission denied", err)
	} else {
		t.Log(err)
	}
}

func get(ctx context.Context, c *clientv3.Client, k string, o ...clientv3.OpOption) error {
	_, err := c.Get(ctx, k, o...)
	return err
}

func put(ctx context.Context, c *clientv3.Client, k, v string) error {
	_, err := c.Put(ctx, k, v)
	return err
}

func putLease(ctx context.Context, c *clientv3.Client, k, v string, l clientv3.LeaseID) error {
	_, err := c.Put(ctx, k, v, clientv3.WithLease(l))
	return err
}

func del(ctx context.Context, c *clientv3.Client, k string, o ...clientv3.OpOption) error {
	_, err := c.Delete(ctx, k, o...)
	return err
}

func errOf[T any](_ T, err error) error { return err }

// Bad specs are refused before anything is written.
func TestAuthSpecChecked(t *testing.T) {
	for _, s := range []AuthSpec{
		{Job: ""},
		{Job: "a/b"},
		{Job: "a", Workers: []string{"x/y"}},
		{Job: "a", Coordinator: RootUser},
		{Job: "a", Workers: []string{"w0", "w1"}, Users: map[string]string{"w1": WorkerUser("a", "w0")}},
		{Job: "a", Workers: []string{"w0"}, Users: map[string]string{"w0": CoordinatorUser("a")}},
	} {
		if _, _, err := s.check(); err == nil {
			t.Errorf("%+v accepted", s)
		}
	}
}

// BenchmarkCommitTLS commits steps over TLS as the job's coordinator,
// with etcd auth off and on (every request then checked against the
// user's permissions), for the ratio of the two.
func BenchmarkCommitTLS(b *testing.B) {
	for _, auth := range []bool{false, true} {
		name := "auth-off"
		if auth {
			name = "auth-on"
		}
		b.Run(name, func(b *testing.B) {
			ctx := context.Background()
			dir := b.TempDir()
			id := tlsx.Coordinator("bench")
			if _, err := tlsx.Issue(dir, []tlsx.Cert{{File: "etcd"}, {File: tlsx.RootCN}, {File: "coordinator", ID: &id}}, time.Hour); err != nil {
				b.Fatal(err)
			}
			e, err := StartEmbedded(ctx, EmbedConfig{Dir: b.TempDir(), TLS: tlsx.FilesFor(dir, "etcd")})
			if err != nil {
				b.Fatal(err)
			}
			defer e.Close()
			dial := func(f string) *clientv3.Client {
				tc, err := tlsx.Load(tlsx.FilesFor(dir, f))
				if err != nil {
					b.Fatal(err)
				}
				cli, err := DialTLS(ctx, e.Endpoints(), 0, tc)
				if err != nil {
					b.Fatal(err)
				}
				return cli
			}
			if auth {
				root := dial(tlsx.RootCN)
				if _, err := SetupAuth(ctx, root, AuthSpec{Job: "bench", Workers: []string{"w0"}}); err != nil {
					b.Fatal(err)
				}
				root.Close()
			}
			cli := dial("coordinator")
			defer cli.Close()
			k, _ := NewKeys("bench")
			s, err := NewSession(ctx, cli, 5)
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			l, err := Campaign(ctx, s, k, "c")
			if err != nil {
				b.Fatal(err)
			}
			c, err := NewCommitter(ctx, l)
			if err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			for i := range b.N {
				if err := c.Commit(ctx, Commit{Step: int64(i + 1), Epoch: 1, Loss: 1}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
