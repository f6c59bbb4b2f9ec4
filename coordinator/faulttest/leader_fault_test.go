package faulttest

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"stagecoach/internal/etcdx"
	"stagecoach/worker"
)

// leaderNow reads the election: the current leader's name and fencing
// token (its key's creation revision), "" when nobody leads.
func leaderNow(t *testing.T, e *env) (string, int64) {
	t.Helper()
	resp, err := e.cli.Get(context.Background(), e.keys.ElectionPrefix(), clientv3.WithPrefix(),
		clientv3.WithSort(clientv3.SortByCreateRevision, clientv3.SortAscend))
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) == 0 {
		return "", 0
	}
	return string(resp.Kvs[0].Value), resp.Kvs[0].CreateRevision
}

// poll calls cond every 10 ms until it holds or d passes.
func poll(t *testing.T, d time.Duration, what string, cond func() bool) time.Time {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, d)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return time.Now()
}

// TestKillLeaderCoordinator runs two real `stagecoach coordinator`
// processes for one job and takes the leader out mid-run, by kill -9 or by
// SIGSTOP past its TTL (then SIGCONT). The standby wins with a higher
// fencing token, resumes from the committed iteration (the newest
// checkpoint plus a replay of the committed steps after it) and finishes:
// commits 1..steps without gap or duplicate, never a commit under an older
// token after a newer one, and final parameters equal to the fault-free
// run's. A paused leader, continued, finds itself deposed and exits
// without another commit.
func TestKillLeaderCoordinator(t *testing.T) {
	for _, tt := range []struct {
		name       string
		sig        syscall.Signal
		withWorker bool
	}{{"kill-9", syscall.SIGKILL, false}, {"sigstop", syscall.SIGSTOP, false}, {"kill-9-with-a-worker", syscall.SIGKILL, true}} {
		t.Run(tt.name, func(t *testing.T) { leaderFault(t, tt.name, tt.sig, tt.withWorker) })
	}
}

// leaderFault hits the leader with sig; withWorker also kills -9 a worker
// at the same moment (a spare is registered), so the new leader may find
// a dead worker still registered.
func leaderFault(t *testing.T, fault string, sig syscall.Signal, withWorker bool) {
	const steps = 40
	job := "leader-" + fault
	e := newEnv(t, job)
	e.startWorkers(t, "w0", "w1", "w2", "w3")
	if withWorker {
		e.startWorkers(t, "w9")
	}
	tc := tiny(4, 4)
	_, want := reference(t, tc, e.corpus, steps)
	outs := map[string]string{}
	coords := map[string]*proc{}
	for _, name := range []string{"coord-a", "coord-b"} {
		outs[name] = t.TempDir()
		coords[name] = start(t, name, "coordinator", "--etcd", strings.Join(e.endpoints, ","), "--job", job, "--name", name,
			"--ttl", fmt.Sprint(ttl), "--workers", "4", "--schedule", "gpipe", "--steps", fmt.Sprint(steps),
			"--layers", "4", "--dim", "16", "--heads", "2", "--ctx", "16", "--microbatches", "4", "--microbatch-size", "2",
			"--seed", "7", "--corpus", e.corpus, "--checkpoint-every", "3", "--out", outs[name], "--checkpoint-dir", e.root)
		if name == "coord-a" {
			// coord-a campaigns first and leads.
			poll(t, 30*time.Second, "coord-a leads", func() bool { n, _ := leaderNow(t, e); return n == "coord-a" })
		}
	}
	oldName, oldRev := leaderNow(t, e)
	poll(t, 60*time.Second, "step 5 committed", func() bool {
		c, _, err := etcdx.Iteration(context.Background(), e.cli, e.keys)
		return err == nil && c.Step >= 5
	})
	killed := time.Now()
	coords[oldName].signal(sig)
	if withWorker {
		e.workers["w2"].signal(syscall.SIGKILL)
	}
	committedAtKill, _, _ := etcdx.Iteration(context.Background(), e.cli, e.keys)
	var newName string
	var newRev int64
	won := poll(t, 30*time.Second, "a new leader", func() bool {
		newName, newRev = leaderNow(t, e)
		return newName != "" && newRev != oldRev
	})
	resumed := poll(t, 60*time.Second, "a commit of the new leader", func() bool {
		c, _, err := etcdx.Iteration(context.Background(), e.cli, e.keys)
		return err == nil && c.LeaderRev == newRev
	})
	if sig == syscall.SIGSTOP {
		old := coords[oldName]
		old.signal(syscall.SIGCONT)
		select {
		case <-old.done:
		case <-time.After(30 * time.Second):
			t.Fatalf("continued leader %s did not step down", oldName)
		}
		if old.err == nil {
			t.Fatalf("continued leader %s exited successfully, want lost leadership", oldName)
		}
		t.Logf("continued leader %s stepped down: %s", oldName, lastLine(old.log.String()))
	}
	standby := coords[newName]
	select {
	case <-standby.done:
	case <-time.After(90 * time.Second):
		t.Fatalf("%s did not finish", newName)
	}
	if standby.err != nil {
		t.Fatalf("%s: %v", newName, standby.err)
	}
	if newName == oldName || newRev <= oldRev {
		t.Fatalf("new leader %s with token %d after %s with %d: want another coordinator with a higher token", newName, newRev, oldName, oldRev)
	}
	t.Logf("FAULT %s leader coordinator: %s (token %d) hit after step %d; %s won with token %d %.3f s later (TTL %d s), its first commit %.3f s after the fault",
		fault, oldName, oldRev, committedAtKill.Step, newName, newRev, won.Sub(killed).Seconds(), ttl, resumed.Sub(killed).Seconds())
	for _, l := range strings.Split(standby.log.String(), "\n") {
		if strings.Contains(l, "recovered") || strings.Contains(l, "resumed") || strings.Contains(l, "replaying") {
			t.Logf("%s: %s", newName, l)
		}
	}
	checkTakeover(t, e, newName, committedAtKill.Step)
	cs := e.checkCommits(t, steps)
	for i := 1; i < len(cs); i++ {
		if cs[i].LeaderRev < cs[i-1].LeaderRev {
			t.Errorf("step %d committed under token %d after step %d under %d", cs[i].Step, cs[i].LeaderRev, cs[i-1].Step, cs[i-1].LeaderRev)
		}
	}
	checkParams(t, worker.StepDir(e.root, steps), want)
	checkRetention(t, e, 3)
}

// checkRetention checks that etcd lists at most retain checkpoints, each
// with every file present on disk, and that retired step directories are
// gone.
func checkRetention(t *testing.T, e *env, retain int) {
	t.Helper()
	resp, err := e.cli.Get(context.Background(), e.keys.CheckpointsPrefix(), clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) == 0 || len(resp.Kvs) > retain {
		t.Fatalf("etcd lists %d checkpoints, want 1..%d", len(resp.Kvs), retain)
	}
	listed := map[string]bool{}
	var base string
	for _, kv := range resp.Kvs {
		var m struct {
			Base  string   `json:"base"`
			Dir   string   `json:"dir"`
			Files []string `json:"files"`
		}
		if err := jsonUnmarshal(kv.Value, &m); err != nil {
			t.Fatal(err)
		}
		for _, f := range m.Files {
			if _, err := os.Stat(f); err != nil {
				t.Errorf("listed checkpoint file %s: %v", f, err)
			}
		}
		listed[m.Dir], base = true, m.Base
	}
	// The last leader retired every older checkpoint it wrote. (A killed
	// leader may leave a directory it saved but never committed: never
	// listed, so harmless.)
	dirs, _ := filepath.Glob(filepath.Join(base, "step-*"))
	for _, d := range dirs {
		if !listed[d] {
			t.Errorf("retired checkpoint directory %s was not removed", d)
		}
	}
	t.Logf("etcd lists %d checkpoints (retention %d)", len(resp.Kvs), retain)
}

// lastLine is the last non-empty line of a log.
func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}
