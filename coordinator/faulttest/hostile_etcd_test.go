package faulttest

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"stagecoach/coordinator"
	"stagecoach/internal/etcdx"
	"stagecoach/internal/tlsx"
	"stagecoach/sim"
)

// TestForgedEtcdRecordsAreIgnored: with etcd auth off anyone reaching
// etcd can write the job's keys. Mid-run, a forger writes an iteration
// record ahead of the commits (the record that used to kill a job:
// "replayed step 59 has no commit record"), a commit record where the
// next commit goes, a rewritten record of a committed step, two bogus
// worker registrations and plan keys that are no epoch; then a worker is killed, so the coordinator
// recovers (re-reading the iteration), restores the last checkpoint and
// replays. The coordinator ignores every forgery with a warning and a
// count, the job trains to completion, the committed steps run 1..n and
// the losses and final parameters equal an undisturbed run's.
func TestForgedEtcdRecordsAreIgnored(t *testing.T) {
	const job, steps = "hostile-etcd", 12
	e := newEnv(t, job)
	e.startWorkers(t, "w0", "w1", "w9") // w9 is the spare
	tc := tiny(4, 4)
	losses, want := reference(t, tc, e.corpus, steps)
	var mu sync.Mutex
	var warnings []string
	etcdx.SetWarnf(func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		warnings = append(warnings, fmt.Sprintf(format, args...))
	})
	defer etcdx.SetWarnf(nil)
	before := map[string]uint64{}
	for _, k := range etcdx.IgnoredKinds {
		before[k] = etcdx.Ignored(k)
	}
	ctx := context.Background()
	put := func(key string, v any) {
		b, err := json.Marshal(v)
		if err != nil {
			t.Error(err)
			return
		}
		if _, err := e.cli.Put(ctx, key, string(b)); err != nil {
			t.Errorf("forge %s: %v", key, err)
		}
	}
	var clock faultClock
	cfg := coordinator.Config{Simulator: sim.Simulator{}, Job: job, Endpoints: e.endpoints, TTL: ttl, Workers: 2, Stages: 2,
		Schedule: "gpipe", Train: tc, Steps: steps, CorpusDir: e.corpus, OutDir: t.TempDir(), CheckpointDir: e.root, Checkpoint: true,
		CheckpointEvery: 4, RPCTimeout: 30 * time.Second, ReplaceWait: time.Second, OnRecovery: clock.onRecovery,
		OnStep: func(r coordinator.StepReport) {
			switch r.Step {
			case 3:
				_, rev := leaderNow(t, e)
				put(e.keys.Iteration(), etcdx.Commit{Step: 59, Epoch: 1, LeaderRev: rev})
				put(e.keys.Commit(4), etcdx.Commit{Step: 4, Epoch: 1, LeaderRev: rev, Loss: 1})
				put(e.keys.Member("w5"), map[string]any{"name": "w5", "addr": "10.6.6.6"})
				put(e.keys.Member("w6"), map[string]any{"name": "w0", "addr": "10.6.6.6:7000"})
				// Plan keys that would stop or overflow the epoch
				// numbering of the replan below.
				put(e.keys.PlanPrefix()+"zzz", "junk")
				put(e.keys.Plan(1<<62), map[string]any{"epoch": int64(math.MaxInt64)})
			case 6:
				// Right after step 6's commit: the iteration again, the
				// record of step 5 (replayed after the restore below)
				// rewritten, and w1 killed while step 7 runs.
				_, rev := leaderNow(t, e)
				put(e.keys.Iteration(), etcdx.Commit{Step: 59, Epoch: 1, LeaderRev: rev})
				put(e.keys.Commit(5), etcdx.Commit{Step: 5, Epoch: 1, LeaderRev: rev, Loss: 1})
				go clock.inject(func() { e.workers["w1"].signal(syscall.SIGKILL) })
			}
		}}
	sum := runCoordinator(t, cfg, 90*time.Second)
	recs := clock.report(t, "forged etcd records, then kill -9 a worker")
	if len(recs) == 0 || recs[0].Kind != "restore" || recs[0].FromCheckpoint != 4 {
		t.Fatalf("recoveries %+v, want a restore from checkpoint 4", recs)
	}
	cs := e.checkCommits(t, steps)
	for _, c := range cs {
		if c.Step != 5 && math.Float64bits(c.Loss) != math.Float64bits(losses[c.Step-1]) {
			t.Errorf("committed step %d has loss %v, the undisturbed run %v", c.Step, c.Loss, losses[c.Step-1])
		}
	}
	for _, s := range sum.Steps {
		if math.Float64bits(s.Loss) != math.Float64bits(losses[s.Step-1]) {
			t.Errorf("step %d trained to loss %v, the undisturbed run %v", s.Step, s.Loss, losses[s.Step-1])
		}
	}
	checkParams(t, sum.Checkpoint, want)
	for _, k := range etcdx.IgnoredKinds {
		if n := etcdx.Ignored(k) - before[k]; n == 0 {
			t.Errorf("no %s record counted as ignored", k)
		} else {
			t.Logf("ignored %d %s records", n, k)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	for _, sub := range []string{
		"iteration: names step 59, which has no commit record",
		"commits/00000000000000000004: present though step 3 is the last committed",
		"commits/00000000000000000005: written at revision",
		`members/w5: worker w5: address "10.6.6.6"`,
		`members/w6: names worker "w0" under the key of "w6"`,
		"plan/zzz: not a plan epoch's key",
		"plan/04611686018427387904: epoch 4611686018427387904 beyond the limit",
	} {
		if !slices.ContainsFunc(warnings, func(w string) bool { return strings.Contains(w, sub) }) {
			t.Errorf("no warning says %q; warnings:\n%s", sub, strings.Join(warnings, "\n"))
		}
	}
}

// TestWorkerCertificateCannotForgeEtcdRecords: with mutual TLS and etcd
// auth on (etcd's users and roles from etcdx.SetupAuth, as `stagecoach
// etcd init-auth` creates them), worker processes and the coordinator
// train while an attacker holding worker w0's certificate tries, mid-run,
// to delete w1's registration, register a fake w1 (under its own lease
// too), forge the iteration and a commit record, list a checkpoint,
// campaign and read another job's keys: etcd refuses every attempt, and
// the job trains to completion with the losses of an undisturbed run.
func TestWorkerCertificateCannotForgeEtcdRecords(t *testing.T) {
	const job, steps = "hostile-auth", 8
	names := []string{"w0", "w1"}
	dir := t.TempDir()
	certs, err := tlsx.JobCerts(job, true, names)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tlsx.Issue(dir, append(certs, tlsx.Cert{File: "etcd"}, tlsx.Cert{File: tlsx.RootCN}), time.Hour); err != nil {
		t.Fatal(err)
	}
	load := func(f string) *tls.Config {
		c, err := tlsx.Load(tlsx.FilesFor(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	ctx := context.Background()
	srv, err := etcdx.StartEmbedded(ctx, etcdx.EmbedConfig{Dir: t.TempDir(), TLS: tlsx.FilesFor(dir, "etcd")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	root, err := etcdx.DialTLS(ctx, srv.Endpoints(), 0, load(tlsx.RootCN))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { root.Close() })
	if _, err := etcdx.SetupAuth(ctx, root, etcdx.AuthSpec{Job: job, Workers: names}); err != nil {
		t.Fatal(err)
	}
	if _, err := etcdx.SetupAuth(ctx, root, etcdx.AuthSpec{Job: "other", Workers: names}); err != nil {
		t.Fatal(err)
	}
	keys, _ := etcdx.NewKeys(job)
	other, _ := etcdx.NewKeys("other")
	if _, err := root.Put(ctx, other.Iteration(), "secret"); err != nil {
		t.Fatal(err)
	}
	e := &env{job: job, endpoints: srv.Endpoints(), cli: root, keys: keys, corpus: writeCorpus(t), root: t.TempDir(), workers: map[string]*proc{}}
	for _, n := range names {
		f := tlsx.FilesFor(dir, n)
		e.workers[n] = start(t, "worker "+n, "worker", "--etcd", strings.Join(e.endpoints, ","), "--job", job, "--name", n,
			"--ttl", fmt.Sprint(ttl), "--data-dir", t.TempDir(), "--checkpoint-root", e.root, "--tls-cert", f.Cert, "--tls-key", f.Key, "--tls-ca", f.CA)
	}
	e.waitRegistered(t, 30*time.Second, names...)
	tc := tiny(4, 4)
	losses, want := reference(t, tc, e.corpus, steps)

	// The attacker: w0's certificate, its own etcd client.
	evil, err := etcdx.DialTLS(ctx, srv.Endpoints(), 0, load("w0"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { evil.Close() })
	evilLease, err := evil.Grant(ctx, 60)
	if err != nil {
		t.Fatalf("an authenticated worker grants a lease: %v", err)
	}
	fake, _ := json.Marshal(etcdx.Member{Name: "w1", Addr: "127.0.0.1:1"})
	var attacked sync.Once
	refusals := map[string]error{}
	attack := func() {
		_, rev := leaderNow(t, e)
		forged, _ := json.Marshal(etcdx.Commit{Step: 59, Epoch: 1, LeaderRev: rev})
		try := func(what string, f func() error) { refusals[what] = f() }
		try("delete w1's registration", func() error { _, err := evil.Delete(ctx, keys.Member("w1")); return err })
		try("register a fake w1", func() error { _, err := evil.Put(ctx, keys.Member("w1"), string(fake)); return err })
		try("register a fake w1 under its lease", func() error {
			_, err := evil.Put(ctx, keys.Member("w1"), string(fake), clientv3.WithLease(evilLease.ID))
			return err
		})
		try("forge the iteration", func() error { _, err := evil.Put(ctx, keys.Iteration(), string(forged)); return err })
		try("forge a commit record", func() error { _, err := evil.Put(ctx, keys.Commit(steps), string(forged)); return err })
		try("list a checkpoint", func() error { _, err := evil.Put(ctx, keys.Checkpoint(steps), `{"dir":"/"}`); return err })
		try("campaign", func() error { _, err := evil.Put(ctx, keys.ElectionPrefix()+"evil", "evil"); return err })
		try("delete the leader key", func() error {
			_, err := evil.Delete(ctx, keys.ElectionPrefix(), clientv3.WithPrefix())
			return err
		})
		try("read the members", func() error {
			_, err := evil.Get(ctx, keys.MembersPrefix(), clientv3.WithPrefix())
			return err
		})
		try("read another job", func() error { _, err := evil.Get(ctx, other.Iteration()); return err })
	}
	cfg := coordinator.Config{Simulator: sim.Simulator{}, Job: job, Endpoints: e.endpoints, TTL: ttl, Workers: 2, Stages: 2,
		Schedule: "gpipe", Train: tc, Steps: steps, CorpusDir: e.corpus, OutDir: t.TempDir(), CheckpointDir: e.root, Checkpoint: true,
		CheckpointEvery: 4, RPCTimeout: 30 * time.Second, TLS: load("coordinator"),
		OnStep: func(r coordinator.StepReport) {
			if r.Step == 3 {
				attacked.Do(attack)
			}
		}}
	sum := runCoordinator(t, cfg, 90*time.Second)
	if len(refusals) == 0 {
		t.Fatal("the attack never ran")
	}
	for what, err := range refusals {
		if !errors.Is(err, rpctypes.ErrPermissionDenied) {
			t.Errorf("with w0's certificate, %s: %v, want permission denied", what, err)
		}
	}
	if len(sum.Recoveries) != 0 {
		t.Errorf("recoveries %+v, want none: no attack got through", sum.Recoveries)
	}
	e.checkCommits(t, steps)
	for _, s := range sum.Steps {
		if math.Float64bits(s.Loss) != math.Float64bits(losses[s.Step-1]) {
			t.Errorf("step %d trained to loss %v, the undisturbed run %v", s.Step, s.Loss, losses[s.Step-1])
		}
	}
	checkParams(t, sum.Checkpoint, want)
	ms, _, err := etcdx.Members(ctx, root, keys)
	if err != nil || len(ms) != 2 || ms[1].Addr == "127.0.0.1:1" {
		t.Errorf("members after the attack: %+v %v", ms, err)
	}
}
