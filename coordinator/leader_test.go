package coordinator_test

import (
	"context"
	"errors"
	"math"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"stagecoach/coordinator"
	"stagecoach/internal/etcdx"
	"stagecoach/planner"
	"stagecoach/sim"
)

// TestStandbyCoordinatorRefusesFinishedJob runs two coordinators for one
// job at once: only one leads and trains; the standby wins only after the
// leader resigns, then finds committed steps and refuses to start over
// instead of applying steps twice.
func TestStandbyCoordinatorRefusesFinishedJob(t *testing.T) {
	corpus := writeCorpus(t)
	const job, steps = "standby", 2
	cl := startCluster(t, job, 2)
	mk := func(name string) *coordinator.Coordinator {
		co, err := coordinator.New(coordinator.Config{Simulator: sim.Simulator{}, Job: job, Name: name, Endpoints: cl.endpoints, TTL: 2, Workers: 2,
			Schedule: "gpipe", Train: tinyTrain(2), Steps: steps, CorpusDir: corpus, OutDir: t.TempDir(), CheckpointDir: cl.root})
		if err != nil {
			t.Fatal(err)
		}
		return co
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	type result struct {
		sum *coordinator.Summary
		err error
	}
	res := make(chan result, 2)
	for _, name := range []string{"a", "b"} {
		co := mk(name)
		go func() {
			s, err := co.Run(ctx)
			res <- result{s, err}
		}()
	}
	var ok, refused int
	for range 2 {
		r := <-res
		switch {
		case r.err == nil:
			ok++
			if len(r.sum.Steps) != steps {
				t.Errorf("leader ran %d steps, want %d", len(r.sum.Steps), steps)
			}
		case strings.Contains(r.err.Error(), "already committed step 2"):
			refused++
		default:
			t.Errorf("unexpected error: %v", r.err)
		}
	}
	if ok != 1 || refused != 1 {
		t.Fatalf("%d runs trained and %d refused; want exactly one of each", ok, refused)
	}
	checkCommits(t, cl.endpoints, job, steps)
}

// TestSkipPipeTrains runs a SkipPipe plan (a third of the stages skipped
// per microbatch) on real workers: every step commits with a finite loss.
func TestSkipPipeTrains(t *testing.T) {
	corpus := writeCorpus(t)
	const job, steps = "skippipe", 3
	cl := startCluster(t, job, 3)
	tc := tinyTrain(3)
	tc.Microbatches = 6
	co, err := coordinator.New(coordinator.Config{Simulator: sim.Simulator{}, Job: job, Endpoints: cl.endpoints, TTL: 2, Workers: 3,
		Schedule: planner.SkipPipe, Train: tc, Steps: steps, CorpusDir: corpus, OutDir: t.TempDir(), CheckpointDir: cl.root})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	sum, err := co.Run(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range sum.Steps {
		if math.IsNaN(s.Loss) || math.IsInf(s.Loss, 0) || s.Loss <= 0 {
			t.Errorf("step %d loss %v", s.Step, s.Loss)
		}
	}
	checkCommits(t, cl.endpoints, job, steps)
}

// TestLostWorkerStopsTheRun kills a worker's registration mid-run with no
// replacement and too few workers left for the stages: after waiting
// ReplaceWait the coordinator stops with ErrWorkerLost instead of waiting
// for an RPC timeout, and the committed sequence stays gap-free.
func TestLostWorkerStopsTheRun(t *testing.T) {
	corpus := writeCorpus(t)
	const job = "lost"
	cl := startCluster(t, job, 2)
	done := make(chan struct{})
	co, err := coordinator.New(coordinator.Config{Simulator: sim.Simulator{}, Job: job, Endpoints: cl.endpoints, TTL: 2, Workers: 2,
		Schedule: "gpipe", Train: tinyTrain(2), Steps: 100000, CorpusDir: corpus, OutDir: t.TempDir(), CheckpointDir: cl.root,
		RPCTimeout: time.Minute, ReplaceWait: 2 * time.Second,
		OnStep: func(r coordinator.StepReport) {
			if r.Step == 2 {
				close(done)
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	go func() {
		<-done
		cl.sessions[1].Close() // revoke: the worker is gone for etcd
	}()
	start := time.Now()
	_, err = co.Run(ctx)
	if !errors.Is(err, coordinator.ErrWorkerLost) {
		t.Fatalf("run ended with %v, want ErrWorkerLost", err)
	}
	t.Logf("stopped %v after start: %v", time.Since(start).Round(time.Millisecond), err)
	cli, err := etcdx.Dial(context.Background(), cl.endpoints, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	keys, _ := etcdx.NewKeys(job)
	cs, err := etcdx.Commits(context.Background(), cli, keys)
	if err != nil || etcdx.CheckSequence(cs) != nil || len(cs) < 2 {
		t.Fatalf("commits %d (%v), want a gap-free sequence of at least 2", len(cs), err)
	}
}

// TestDeposedLeaderStops revokes the leader's lease mid-run (as etcd does
// when a paused leader misses its TTL): the coordinator stops giving
// orders and reports lost leadership; no commit of a deposed leader lands.
func TestDeposedLeaderStops(t *testing.T) {
	corpus := writeCorpus(t)
	const job = "deposed"
	cl := startCluster(t, job, 2)
	cli, err := etcdx.Dial(context.Background(), cl.endpoints, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	keys, _ := etcdx.NewKeys(job)
	revoked := make(chan struct{})
	co, err := coordinator.New(coordinator.Config{Simulator: sim.Simulator{}, Job: job, Endpoints: cl.endpoints, TTL: 2, Workers: 2,
		Schedule: "gpipe", Train: tinyTrain(2), Steps: 100000, CorpusDir: corpus, OutDir: t.TempDir(), CheckpointDir: cl.root,
		OnStep: func(r coordinator.StepReport) {
			if r.Step != 2 {
				return
			}
			resp, err := cli.Get(context.Background(), keys.ElectionPrefix(), clientv3.WithPrefix())
			if err != nil || len(resp.Kvs) != 1 {
				t.Errorf("leader keys: %v, %v", resp, err)
				return
			}
			if _, err := cli.Revoke(context.Background(), clientv3.LeaseID(resp.Kvs[0].Lease)); err != nil {
				t.Error(err)
			}
			close(revoked)
		}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	_, err = co.Run(ctx)
	if err == nil || !(errors.Is(err, etcdx.ErrDeposed) || strings.Contains(err.Error(), "lost leadership")) {
		t.Fatalf("run ended with %v, want lost leadership", err)
	}
	<-revoked
	cs, err := etcdx.Commits(context.Background(), cli, keys)
	if err != nil || etcdx.CheckSequence(cs) != nil || len(cs) != 2 {
		t.Fatalf("%d commits (%v), want exactly steps 1 and 2", len(cs), err)
	}
}

// TestResumeFromCommittedCheckpoint stops a coordinator after step 2 of 4
// (checkpointing every step), then runs a new one for the same job: it
// resumes from the checkpoint committed with step 2, and the finished run
// equals the single-process trainer bit for bit, with commits 1..4 and no
// gap or duplicate.
func TestResumeFromCommittedCheckpoint(t *testing.T) {
	corpus := writeCorpus(t)
	const job, steps = "resume", 4
	tc := tinyTrain(2)
	wantLoss, wantParams := reference(t, tc, corpus, steps)
	cl := startCluster(t, job, 2)
	out := t.TempDir()
	var got []float64
	run := func(stopAfter int64) (*coordinator.Summary, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		co, err := coordinator.New(coordinator.Config{Simulator: sim.Simulator{}, Job: job, Endpoints: cl.endpoints, TTL: 2, Workers: 2,
			Schedule: "gpipe", Train: tc, Steps: steps, CorpusDir: corpus, OutDir: out, CheckpointDir: cl.root, CheckpointEvery: 1, Checkpoint: true,
			OnStep: func(r coordinator.StepReport) {
				got = append(got, r.Loss)
				if r.Step == stopAfter {
					cancel()
				}
			}})
		if err != nil {
			t.Fatal(err)
		}
		return co.Run(ctx)
	}
	if _, err := run(2); err == nil {
		t.Fatal("stopped run reported success")
	}
	sum, err := run(0)
	if err != nil {
		t.Fatal(err)
	}
	if len(sum.Steps) != 2 || sum.Steps[0].Step != 3 {
		t.Fatalf("resumed run did steps %+v, want 3 and 4", sum.Steps)
	}
	if sum.Epoch != 2 {
		t.Errorf("resumed run has plan epoch %d, want 2", sum.Epoch)
	}
	for i := range wantLoss {
		if i >= len(got) || math.Float64bits(got[i]) != math.Float64bits(wantLoss[i]) {
			t.Fatalf("losses across the restart differ from the single-process trainer:\n got %v\nwant %v", got, wantLoss)
		}
	}
	checkParams(t, sum.Checkpoint, wantParams)
	checkCommits(t, cl.endpoints, job, steps)
}
