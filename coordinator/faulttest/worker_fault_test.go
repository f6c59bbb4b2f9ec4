package faulttest

import (
	"context"
	"math"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"stagecoach/coordinator"
	"stagecoach/internal/etcdx"
	"stagecoach/planner"
	pb "stagecoach/proto"
	"stagecoach/sim"
)

// faultClock records when a fault was injected and what the coordinator
// reported about it.
type faultClock struct {
	mu       sync.Mutex
	injected time.Time
	recs     []coordinator.Recovery
}

func (f *faultClock) inject(fn func()) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn()
	f.injected = time.Now()
}

func (f *faultClock) onRecovery(r coordinator.Recovery) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.recs = append(f.recs, r)
}

// report logs every recovery with its detection time (from the injected
// fault) and its recovery times, and one summary line per recovery.
func (f *faultClock) report(t *testing.T, fault string) []coordinator.Recovery {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, r := range f.recs {
		detect := r.DetectedAt.Sub(f.injected).Seconds()
		t.Logf("FAULT %s: %s at step %d (lost %v, joined %v): detected %.3f s after the fault, plan ready %.3f s later, first new commit %.3f s after detection; epoch %d on %d workers, restored checkpoint %d, replayed %d",
			fault, r.Kind, r.Step, r.Lost, r.Joined, detect, r.RecoveryS, r.ToCommitS, r.Epoch, r.Workers, r.FromCheckpoint, r.Replayed)
	}
	return slices.Clone(f.recs)
}

// runCoordinator runs an in-process coordinator (the workers are real
// processes) under a bounded context.
func runCoordinator(t *testing.T, cfg coordinator.Config, d time.Duration) *coordinator.Summary {
	t.Helper()
	cfg.Logf = t.Logf
	co, err := coordinator.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	sum, err := co.Run(ctx)
	if err != nil {
		t.Fatalf("run: %v", err)
	}
	return sum
}

// TestKillWorkerGPipe kills -9 a GPipe worker process mid-run. With a
// spare worker registered, the coordinator abandons the iteration,
// installs a new plan with the spare, restores every shard from the last
// committed checkpoint (or from the seed before the first one), replays
// the committed steps after it and finishes: commits are gap-free and the
// final parameters equal the fault-free run's bit for bit. Without a
// spare, a replicated pipeline continues on the replicas left.
func TestKillWorkerGPipe(t *testing.T) {
	for _, tt := range []struct {
		name            string
		workers, stages int
		spare           bool
		killAfter       int64
		from            int64 // checkpoint restored
	}{
		{"after-checkpoint", 4, 4, true, 6, 4},
		{"before-first-checkpoint", 4, 4, true, 2, 0},
		{"no-spare-fewer-replicas", 4, 2, false, 5, 4},
	} {
		t.Run(tt.name, func(t *testing.T) {
			const steps = 12
			job := "kill-gpipe-" + tt.name
			e := newEnv(t, job)
			names := []string{"w0", "w1", "w2", "w3"}
			if tt.spare {
				names = append(names, "w9")
			}
			e.startWorkers(t, names...)
			tc := tiny(4, 4)
			_, want := reference(t, tc, e.corpus, steps)
			var clock faultClock
			cfg := coordinator.Config{Simulator: sim.Simulator{}, Job: job, Endpoints: e.endpoints, TTL: ttl, Workers: tt.workers, Stages: tt.stages,
				Schedule: "gpipe", Train: tc, Steps: steps, CorpusDir: e.corpus, OutDir: t.TempDir(), CheckpointDir: e.root, Checkpoint: true,
				CheckpointEvery: 4, RPCTimeout: 30 * time.Second, ReplaceWait: time.Second, OnRecovery: clock.onRecovery,
				Cluster: slowLinks(names...),
				OnStep: func(r coordinator.StepReport) {
					if r.Step == tt.killAfter {
						// Killed right after a commit, while the next
						// step's RunIteration is in flight.
						go clock.inject(func() { e.workers["w2"].signal(syscall.SIGKILL) })
					}
				}}
			sum := runCoordinator(t, cfg, 90*time.Second)
			checkSlowLinks(t, sum)
			recs := clock.report(t, "kill -9 GPipe worker ("+tt.name+")")
			e.checkCommits(t, steps)
			if len(recs) == 0 || recs[0].Kind != "restore" || !slices.Contains(recs[0].Lost, "w2") || recs[0].FromCheckpoint != tt.from {
				t.Fatalf("recoveries %+v, want a restore from checkpoint %d that lost w2", recs, tt.from)
			}
			checkRecorded(t, e, sum)
			if tt.spare {
				checkParams(t, sum.Checkpoint, want)
			} else if sum.Workers != 2 {
				t.Errorf("finished on %d workers, want 2 (one replica per stage left)", sum.Workers)
			}
		})
	}
}

// TestKillWorkerSkipPipe kills -9 a SkipPipe worker of a stage above 0:
// the microbatches are re-pathed around it (its stage keeps a replica),
// nothing is restored, and the run completes with gap-free commits.
func TestKillWorkerSkipPipe(t *testing.T) {
	const job, steps = "kill-skippipe", 10
	e := newEnv(t, job)
	e.startWorkers(t, "w0", "w1", "w2", "w3", "w4", "w5")
	tc := tiny(3, 4)
	var clock faultClock
	var victim string
	cfg := coordinator.Config{Simulator: sim.Simulator{}, Job: job, Endpoints: e.endpoints, TTL: ttl, Workers: 6, Stages: 3, Schedule: planner.SkipPipe,
		Train: tc, Steps: steps, CorpusDir: e.corpus, OutDir: t.TempDir(), CheckpointDir: e.root, Checkpoint: true, CheckpointEvery: 5,
		RPCTimeout: 30 * time.Second, OnRecovery: clock.onRecovery, Cluster: slowLinks("w0", "w1", "w2", "w3", "w4", "w5"),
		OnStep: func(r coordinator.StepReport) {
			if r.Step == 3 {
				victim = stageWorker(t, e, 1, 1)
				go clock.inject(func() { e.workers[victim].signal(syscall.SIGKILL) })
			}
		}}
	sum := runCoordinator(t, cfg, 90*time.Second)
	checkSlowLinks(t, sum)
	recs := clock.report(t, "kill -9 SkipPipe worker")
	e.checkCommits(t, steps)
	if len(recs) == 0 || recs[0].Kind != "repath" || !slices.Contains(recs[0].Lost, victim) {
		t.Fatalf("recoveries %+v, want a re-path that lost %s", recs, victim)
	}
	checkRecorded(t, e, sum)
	for _, s := range sum.Steps {
		if math.IsNaN(s.Loss) || math.IsInf(s.Loss, 0) || s.Loss <= 0 {
			t.Errorf("step %d loss %v", s.Step, s.Loss)
		}
	}
	if sum.Workers != 5 {
		t.Errorf("finished on %d workers, want 5", sum.Workers)
	}
}

// stageWorker names the plan worker holding stage s with replica index
// rep in the newest plan manifest.
func stageWorker(t *testing.T, e *env, s, rep int) string {
	t.Helper()
	resp, err := e.cli.Get(context.Background(), e.keys.PlanPrefix(), lastKey()...)
	if err != nil || len(resp.Kvs) == 0 {
		t.Fatalf("read plan: %v", err)
	}
	var m coordinator.PlanManifest
	if err := jsonUnmarshal(resp.Kvs[0].Value, &m); err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, w := range m.Workers {
		if slices.Contains(w.Stages, s) {
			if n == rep {
				return w.Name
			}
			n++
		}
	}
	t.Fatalf("plan of epoch %d has no replica %d of stage %d", m.Epoch, rep, s)
	return ""
}

// TestPauseWorkerSkipPipe stops a SkipPipe worker with SIGSTOP past its
// lease TTL: the coordinator sees its lease lapse and re-paths around it.
// After SIGCONT the worker registers again under a new lease and takes its
// stage back at an iteration boundary, loaded from a live replica. Commands
// and tensors of the epoch it was paused in are refused by everyone.
func TestPauseWorkerSkipPipe(t *testing.T) {
	const job, steps = "pause-skippipe", 40
	e := newEnv(t, job)
	e.startWorkers(t, "w0", "w1", "w2", "w3", "w4", "w5")
	tc := tiny(3, 4)
	var clock faultClock
	var victim string
	var oldFence *pb.Fence
	resumed := make(chan struct{})
	var once sync.Once
	cfg := coordinator.Config{Simulator: sim.Simulator{}, Job: job, Endpoints: e.endpoints, TTL: ttl, Workers: 6, Stages: 3, Schedule: planner.SkipPipe,
		Train: tc, Steps: steps, CorpusDir: e.corpus, OutDir: t.TempDir(), CheckpointDir: e.root, Checkpoint: true, CheckpointEvery: 10,
		RPCTimeout: 30 * time.Second,
		OnRecovery: func(r coordinator.Recovery) {
			clock.onRecovery(r)
			if r.Kind == "repath" {
				// Continue the paused worker once the run went on
				// without it; its lease is gone, so it registers anew.
				once.Do(func() {
					e.workers[victim].signal(syscall.SIGCONT)
					close(resumed)
				})
			}
		},
		OnStep: func(r coordinator.StepReport) {
			switch {
			case r.Step == 3:
				victim = stageWorker(t, e, 2, 0)
				oldFence = currentFence(t, e)
				go clock.inject(func() { e.workers[victim].signal(syscall.SIGSTOP) })
			case r.Step > 3:
				// Pace the run so the rejoin has boundaries to land on.
				select {
				case <-resumed:
				case <-time.After(20 * time.Millisecond):
				}
				time.Sleep(20 * time.Millisecond)
			}
		}}
	sum := runCoordinator(t, cfg, 90*time.Second)
	recs := clock.report(t, "SIGSTOP SkipPipe worker")
	e.checkCommits(t, steps)
	var repathed, rejoined bool
	for _, r := range recs {
		repathed = repathed || r.Kind == "repath" && slices.Contains(r.Lost, victim)
		rejoined = rejoined || r.Kind == "rejoin" && slices.Contains(r.Joined, victim)
	}
	if !repathed || !rejoined {
		t.Fatalf("recoveries %+v: want %s re-pathed around and rejoined", recs, victim)
	}
	if sum.Workers != 6 {
		t.Errorf("finished on %d workers, want 6 (the paused one back)", sum.Workers)
	}
	// Everything of the paused epoch is refused now, by every worker,
	// the resumed one included.
	ms, _, err := etcdx.Members(context.Background(), e.cli, e.keys)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range ms {
		cli, closeFn, err := coordinator.DialWorker(context.Background(), m.Addr)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err = cli.Step(ctx, &pb.StepRequest{Fence: oldFence, Iteration: steps + 1, ClipScale: 1, Lr: 0})
		cancel()
		closeFn()
		if status.Code(err) != codes.FailedPrecondition {
			t.Errorf("worker %s answered a Step of the paused epoch %d with %v, want FailedPrecondition", m.Name, oldFence.Epoch, err)
		}
	}
	t.Logf("a Step of epoch %d (the paused one) was refused by all %d workers; the resumed worker logged %d rejected stale messages",
		oldFence.Epoch, len(ms), countStale(e.workers[victim].log.String()))
}

// currentFence is the fence of the newest plan epoch.
func currentFence(t *testing.T, e *env) *pb.Fence {
	t.Helper()
	resp, err := e.cli.Get(context.Background(), e.keys.PlanPrefix(), lastKey()...)
	if err != nil || len(resp.Kvs) == 0 {
		t.Fatalf("read plan: %v", err)
	}
	var m coordinator.PlanManifest
	if err := jsonUnmarshal(resp.Kvs[0].Value, &m); err != nil {
		t.Fatal(err)
	}
	return &pb.Fence{Job: e.job, LeaderRev: m.LeaderRev, Epoch: m.Epoch}
}
