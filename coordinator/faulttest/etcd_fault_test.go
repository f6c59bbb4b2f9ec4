package faulttest

import (
	"context"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"stagecoach/coordinator"
	"stagecoach/sim"
)

// freePort returns a loopback port that was free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// TestStopEtcdLeaderMember runs the job on a three-member etcd cluster of
// `stagecoach etcd` processes and kills -9 the etcd leader mid-run: the
// remaining two elect a new etcd leader, writes resume, and the run
// finishes with a gap-free commit sequence and the fault-free parameters.
func TestStopEtcdLeaderMember(t *testing.T) {
	const job, steps = "kill-etcd", 30
	ms, e := startEtcdCluster(t, job)
	ctx, cli, eps := context.Background(), e.cli, e.endpoints
	e.startWorkers(t, "w0", "w1", "w2", "w3")
	tc := tiny(4, 4)
	_, want := reference(t, tc, e.corpus, steps)

	// The etcd leader is the member whose status names itself leader.
	leaderOf := func() *etcdMember {
		for _, m := range ms {
			c, cancel := context.WithTimeout(ctx, time.Second)
			st, err := cli.Status(c, strings.TrimPrefix(m.client, "http://"))
			cancel()
			if err == nil && st.Leader == st.Header.MemberId {
				return m
			}
		}
		return nil
	}
	var killed time.Time
	var victim *etcdMember
	var commits []time.Time
	out := t.TempDir()
	cfg := coordinator.Config{Simulator: sim.Simulator{}, Job: job, Endpoints: eps, TTL: ttl, Workers: 4, Schedule: "gpipe", Train: tc, Steps: steps,
		CorpusDir: e.corpus, OutDir: out, CheckpointDir: e.root, Checkpoint: true, CheckpointEvery: 5, RPCTimeout: 30 * time.Second,
		OnStep: func(r coordinator.StepReport) {
			commits = append(commits, time.Now())
			if r.Step == 5 {
				if victim = leaderOf(); victim == nil {
					t.Error("no etcd leader found")
					return
				}
				victim.p.signal(syscall.SIGKILL)
				killed = time.Now()
			}
		}}
	// A coordinator whose lease could not be renewed while etcd changed
	// leaders steps down; the next one (a standby) resumes.
	sum := runTerms(t, cfg, 2)
	if victim == nil {
		t.Fatal("no etcd member was killed")
	}
	// The longest stall between two commits after the kill is the write
	// outage the run saw.
	var stall time.Duration
	for i := 1; i < len(commits); i++ {
		if commits[i].After(killed) {
			from := commits[i-1]
			if from.Before(killed) {
				from = killed
			}
			stall = max(stall, commits[i].Sub(from))
		}
	}
	t.Logf("FAULT kill -9 etcd leader member: %s killed after step 5; longest commit stall after it %.3f s", victim.name, stall.Seconds())
	e.checkCommits(t, steps)
	checkParams(t, sum.Checkpoint, want)
}
