package worker_test

import (
	"context"
	"math"
	"strconv"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"

	"stagecoach/internal/etcdx"
	"stagecoach/model"
	pb "stagecoach/proto"
	"stagecoach/scheduler"
	"stagecoach/worker"
	"stagecoach/worker/workertest"
)

// TestFenceFollowsElection: workers check fences against the job's
// election in a real etcd. A fence from the future (MaxInt64, or one
// above the leader) is refused and not adopted, so the real leader goes
// on; a deposed leader is refused; a new leader's first command is
// admitted even when the worker's watch has not delivered its key yet
// (here the watch is stopped, so only the re-read can see it). Refusals
// echo neither the job nor a revision.
func TestFenceFollowsElection(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	// Worker 0 follows the election; worker 1's watch stops after its
	// first read, as a watch lagging behind a new leader would.
	stalled, stop := context.WithCancel(ctx)
	j := startElectedJob(t, ctx, func(i int) context.Context {
		if i == 1 {
			return stalled
		}
		return ctx
	})
	stop()
	e, a, c, d, cfg, ref := j.etcd, j.a, j.c, j.d, j.cfg, j.ref
	var err error
	step := func(n int) {
		t.Helper()
		got, want := stepBoth(t, ctx, d, ref, 5, n, cfg.Microbatches, cfg.MicrobatchSize)
		if math.Float64bits(got.Loss) != math.Float64bits(want.Loss) {
			t.Fatalf("step %d: loss %v, trainer %v", n, got.Loss, want.Loss)
		}
	}
	step(1)

	secret := func(what string, err error, revs ...int64) {
		t.Helper()
		if err == nil {
			return
		}
		msg := err.Error()
		if strings.Contains(msg, testJob) {
			t.Errorf("%s: refusal names the job: %v", what, err)
		}
		for _, r := range revs {
			if strings.Contains(msg, strconv.FormatInt(r, 10)) {
				t.Errorf("%s: refusal echoes revision %d: %v", what, r, err)
			}
		}
	}
	for i, w := range d.Clients {
		_, err := w.Step(ctx, &pb.StepRequest{Fence: fence(d, func(f *pb.Fence) { f.LeaderRev = math.MaxInt64 }), Iteration: 2, ClipScale: 1, Lr: 1})
		wantCode(t, "Step from the future", err, codes.PermissionDenied)
		secret("Step from the future", err, a.Rev(), math.MaxInt64)
		_, err = w.Configure(ctx, &pb.ConfigureRequest{Fence: fence(d, func(f *pb.Fence) { f.LeaderRev = a.Rev() + 1; f.Epoch = 9 }),
			PlanJson: []byte("{}"), Worker: int32(i), Peers: c.Addrs})
		wantCode(t, "Configure one revision above the leader", err, codes.PermissionDenied)
		secret("Configure above the leader", err, a.Rev(), a.Rev()+1)
		_, err = w.SaveCheckpoint(ctx, &pb.CheckpointRequest{Fence: fence(d, func(f *pb.Fence) { f.LeaderRev = a.Rev() - 1 })})
		wantCode(t, "SaveCheckpoint of an older revision", err, codes.FailedPrecondition)
		secret("older revision", err, a.Rev(), a.Rev()-1)
		_, err = w.Status(ctx, &pb.StatusRequest{})
		if err != nil {
			t.Errorf("worker %d: Status without TLS: %v", i, err)
		}
	}
	// Nothing was adopted: the real leader goes on.
	step(2)

	// A new leader: the old one is refused, the new one admitted on both
	// workers, including the one whose watch stopped before the change.
	b := j.handOver(t, ctx)
	old := d.Fence
	d.Fence = &pb.Fence{Job: testJob, LeaderRev: b.Rev(), Epoch: 2}
	if err := d.Configure(ctx, nil); err != nil {
		t.Fatalf("new leader's Configure: %v", err)
	}
	for _, w := range d.Clients {
		_, err := w.RunIteration(ctx, &pb.RunIterationRequest{Fence: old, Iteration: 3})
		wantCode(t, "deposed leader", err, codes.FailedPrecondition)
		secret("deposed leader", err, a.Rev(), b.Rev())
	}
	step(3)

	// No leader at all (the job ended): the last leader's fence is
	// deposed, one never admitted is still forged.
	if err := b.Resign(ctx); err != nil {
		t.Fatal(err)
	}
	for _, w := range d.Clients {
		_, err := w.Step(ctx, &pb.StepRequest{Fence: d.Fence, Iteration: 4, ClipScale: 1, Lr: 1})
		wantCode(t, "the last leader's fence after it resigned", err, codes.FailedPrecondition)
		_, err = w.Step(ctx, &pb.StepRequest{Fence: fence(d, func(f *pb.Fence) { f.LeaderRev++ }), Iteration: 4, ClipScale: 1, Lr: 1})
		wantCode(t, "a forged fence with no leader", err, codes.PermissionDenied)
	}

	// etcd gone: a fence the watched revision does not explain cannot be
	// checked, and is refused after a bounded read.
	e.Close()
	_, err = d.Clients[0].Step(ctx, &pb.StepRequest{Fence: fence(d, func(f *pb.Fence) { f.LeaderRev += 2 }), Iteration: 4, ClipScale: 1, Lr: 1})
	wantCode(t, "a fence while etcd is down", err, codes.Unavailable)
}

// TestDeposedLeadersIterationEnds: a leader that stops mid-iteration
// (paused past its lease, say) keeps its connections open, so its
// RunIteration on a worker whose peer never got the iteration would wait
// for inputs forever and hold the worker's control lock. Once the
// election names a new leader, that iteration ends as deposed and the new
// leader's Configure is served, and training goes on under it.
func TestDeposedLeadersIterationEnds(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	j := startElectedJob(t, ctx, func(int) context.Context { return ctx })
	d, cfg, ref, plan := j.d, j.cfg, j.ref, j.d.Plan

	// Leader a sends iteration 1 to worker 0 only: its stage waits for
	// the gradients of stage 1, which never ran.
	w := stepWindows(5, 1, cfg.Microbatches, cfg.MicrobatchSize, ref.Cfg.Model.Ctx, ref.Pipe.Cfg.Vocab)
	var data []*pb.MicrobatchData
	for mb, win := range w {
		data = append(data, &pb.MicrobatchData{Microbatch: int32(mb), Batch: int32(plan.Microbatches[mb].Samples),
			Ctx: int32(ref.Cfg.Model.Ctx), Tokens: win})
	}
	stuck := make(chan error, 1)
	go func() {
		_, err := d.Clients[0].RunIteration(ctx, &pb.RunIterationRequest{Fence: d.Fence, Iteration: 1, Data: data})
		stuck <- err
	}()
	// It cannot finish while a leads.
	select {
	case err := <-stuck:
		t.Fatalf("worker 0 finished an iteration its peer never ran: %v", err)
	case <-time.After(500 * time.Millisecond):
	}

	// a is deposed without closing its connection; b leads.
	b := j.handOver(t, ctx)
	select {
	case err := <-stuck:
		wantCode(t, "the deposed leader's iteration", err, codes.FailedPrecondition)
	case <-time.After(time.Minute):
		t.Fatal("the deposed leader's iteration still holds worker 0 a minute after b leads")
	}
	d.Fence = &pb.Fence{Job: testJob, LeaderRev: b.Rev(), Epoch: 2}
	if err := d.Configure(ctx, nil); err != nil {
		t.Fatalf("new leader's Configure: %v", err)
	}
	got, want := stepBoth(t, ctx, d, ref, 5, 1, cfg.Microbatches, cfg.MicrobatchSize)
	if math.Float64bits(got.Loss) != math.Float64bits(want.Loss) {
		t.Fatalf("step 1 under the new leader: loss %v, trainer %v", got.Loss, want.Loss)
	}
}

// electedJob is a job whose workers follow a real election: an embedded
// etcd, leader "a" elected under a 2 s session, and two workers, each
// with a LeaderWatch bounded by watchCtx(i), configured for a 2-stage
// GPipe plan under a's fence.
type electedJob struct {
	etcd *etcdx.Embedded
	cli  *clientv3.Client
	keys etcdx.Keys
	a    *etcdx.Leader
	c    *workertest.Cluster
	d    *workertest.Driver
	cfg  model.TrainConfig
	ref  *model.Trainer
}

func startElectedJob(t *testing.T, ctx context.Context, watchCtx func(i int) context.Context) *electedJob {
	t.Helper()
	j := &electedJob{}
	var err error
	if j.etcd, err = etcdx.StartEmbedded(ctx, etcdx.EmbedConfig{Dir: t.TempDir()}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(j.etcd.Close)
	if j.cli, err = etcdx.Dial(ctx, j.etcd.Endpoints(), 0); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { j.cli.Close() })
	if j.keys, err = etcdx.NewKeys(testJob); err != nil {
		t.Fatal(err)
	}
	sa, err := etcdx.NewSession(ctx, j.cli, 2)
	if err != nil {
		t.Fatal(err)
	}
	if j.a, err = etcdx.Campaign(ctx, sa, j.keys, "a"); err != nil {
		t.Fatal(err)
	}
	j.c = workertest.Start(t, 2, testJob, func(i int, cfg *worker.Config) {
		lw, err := etcdx.WatchLeader(watchCtx(i), j.cli, j.keys)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Leader = lw
	})
	j.cfg = trainConfig(2, 2, 2)
	if j.ref, err = model.NewTrainer(j.cfg); err != nil {
		t.Fatal(err)
	}
	plan, err := scheduler.Generate("gpipe", scheduler.Spec{Stages: 2, Microbatches: 2, Layers: 2, Samples: 2})
	if err != nil {
		t.Fatal(err)
	}
	j.d = &workertest.Driver{Clients: workertest.Dial(t, j.c.Addrs), Peers: j.c.Addrs, Plan: plan, Train: j.ref.Cfg,
		Fence: &pb.Fence{Job: testJob, LeaderRev: j.a.Rev(), Epoch: 1}}
	if err := j.d.Configure(ctx, nil); err != nil {
		t.Fatal(err)
	}
	return j
}

// handOver has leader a resign and elects "b" under a session of its own.
func (j *electedJob) handOver(t *testing.T, ctx context.Context) *etcdx.Leader {
	t.Helper()
	sb, err := etcdx.NewSession(ctx, j.cli, 2)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sb.Close() })
	if err := j.a.Resign(ctx); err != nil {
		t.Fatal(err)
	}
	b, err := etcdx.Campaign(ctx, sb, j.keys, "b")
	if err != nil {
		t.Fatal(err)
	}
	return b
}
