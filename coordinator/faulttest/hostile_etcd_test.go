package faulttest

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"stagecoach/coordinator"
	"stagecoach/internal/etcdx"
)

// TestForgedEtcdRecordsAreIgnored: with etcd auth off anyone reaching
// etcd can write the job's keys. Mid-run, a forger writes an iteration
// record ahead of the commits (the record that used to kill a job:
// "replayed step 59 has no commit record"), a commit record where the
// next commit goes, a rewritten record of a committed step and two bogus
// worker registrations; then a worker is killed, so the coordinator
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
	cfg := coordinator.Config{Job: job, Endpoints: e.endpoints, TTL: ttl, Workers: 2, Stages: 2,
		Schedule: "gpipe", Train: tc, Steps: steps, CorpusDir: e.corpus, OutDir: t.TempDir(), Checkpoint: true,
		CheckpointEvery: 4, RPCTimeout: 30 * time.Second, ReplaceWait: time.Second, OnRecovery: clock.onRecovery,
		OnStep: func(r coordinator.StepReport) {
			switch r.Step {
			case 3:
				_, rev := leaderNow(t, e)
				put(e.keys.Iteration(), etcdx.Commit{Step: 59, Epoch: 1, LeaderRev: rev})
				put(e.keys.Commit(4), etcdx.Commit{Step: 4, Epoch: 1, LeaderRev: rev, Loss: 1})
				put(e.keys.Member("w5"), map[string]any{"name": "w5", "addr": "10.6.6.6"})
				put(e.keys.Member("w6"), map[string]any{"name": "w0", "addr": "10.6.6.6:7000"})
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
	} {
		if !slices.ContainsFunc(warnings, func(w string) bool { return strings.Contains(w, sub) }) {
			t.Errorf("no warning says %q; warnings:\n%s", sub, strings.Join(warnings, "\n"))
		}
	}
}
