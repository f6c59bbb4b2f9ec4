package coordinator_test

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"stagecoach/coordinator"
	"stagecoach/internal/etcdx"
	"stagecoach/internal/metrics"
	"stagecoach/internal/metrics/metricstest"
	"stagecoach/model"
	"stagecoach/sim"
	"stagecoach/worker"
)

// TestResumeSkipsForgedAndCorruptCheckpoints stops a job after step 4
// (checkpointing every step), then damages what a restarted coordinator
// finds: 64 float bits flipped in the newest checkpoint's shard, a forged
// newer listing whose directory escapes the checkpoint root through a
// symlink, and a forged older listing naming a directory outside the job
// (which the old pruning would have deleted). The restarted coordinator
// ignores both forgeries (nothing outside the root is touched), detects
// the damaged checkpoint, resumes from the one before, replays one step
// more, and finishes with the single-process trainer's losses and
// parameters bit for bit.
func TestResumeSkipsForgedAndCorruptCheckpoints(t *testing.T) {
	corpus := writeCorpus(t)
	const job, steps = "resume-damaged", 6
	tc := tinyTrain(2)
	wantLoss, wantParams := reference(t, tc, corpus, steps)
	cl := startCluster(t, job, 2)
	out := t.TempDir()
	reg := prometheus.NewRegistry()
	var mu sync.Mutex
	var logs strings.Builder
	got := map[int64]float64{}
	run := func(stopAfter int64, m *metrics.Coordinator) (*coordinator.Summary, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		co, err := coordinator.New(coordinator.Config{Simulator: sim.Simulator{}, Job: job, Endpoints: cl.endpoints, TTL: 2, Workers: 2,
			Schedule: "gpipe", Train: tc, Steps: steps, CorpusDir: corpus, OutDir: out, CheckpointDir: cl.root,
			CheckpointEvery: 1, Checkpoint: true, Metrics: m,
			Logf: func(f string, a ...any) {
				mu.Lock()
				defer mu.Unlock()
				logs.WriteString(strings.TrimSpace(sprintf(f, a...)) + "\n")
			},
			OnStep: func(r coordinator.StepReport) {
				got[r.Step] = r.Loss
				if r.Step == stopAfter {
					cancel()
				}
			}})
		if err != nil {
			t.Fatal(err)
		}
		return co.Run(ctx)
	}
	if _, err := run(4, nil); err == nil {
		t.Fatal("stopped run reported success")
	}

	ctx := context.Background()
	cli, err := etcdx.Dial(ctx, cl.endpoints, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	keys, _ := etcdx.NewKeys(job)
	var m4 coordinator.CheckpointManifest
	if ok, err := etcdx.GetJSON(ctx, cli, keys.Checkpoint(4), &m4); err != nil || !ok {
		t.Fatalf("checkpoint 4 not listed: %v", err)
	}
	if len(m4.Shards) != 2 {
		t.Fatalf("checkpoint 4 lists %d shard digests, want 2: %+v", len(m4.Shards), m4)
	}
	// 64 bits of shard 1's tensor data flipped.
	shard := filepath.Join(worker.StepDir(cl.root, 4), model.ShardFile(1))
	b, err := os.ReadFile(shard)
	if err != nil {
		t.Fatal(err)
	}
	data := 8 + int(binary.LittleEndian.Uint64(b))
	for i := range 64 {
		b[data+4*i] ^= 0x01
	}
	if err := os.WriteFile(shard, b, 0o644); err != nil {
		t.Fatal(err)
	}
	// Victims outside the root, each with a file that must survive.
	victim := t.TempDir()
	for _, d := range []string{worker.StepDir(victim, 1), filepath.Join(victim, "precious"), worker.StepDir(victim, 5)} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, "keep"), []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink(victim, filepath.Join(cl.root, "escape")); err != nil {
		t.Fatal(err)
	}
	forge := func(step int64, base, dir string) {
		m := m4
		m.Step, m.Base, m.Dir = step, base, dir
		v, _ := json.Marshal(m)
		if _, err := cli.Put(ctx, keys.Checkpoint(step), string(v)); err != nil {
			t.Fatal(err)
		}
	}
	forge(1, victim, filepath.Join(victim, "precious"))
	forge(5, filepath.Join(cl.root, "escape"), worker.StepDir(filepath.Join(cl.root, "escape"), 5))

	sum, err := run(0, metrics.NewCoordinator(reg))
	if err != nil {
		t.Fatalf("%v\n%s", err, logs.String())
	}
	t.Logf("restarted coordinator:\n%s", logs.String())
	if len(sum.Steps) != 2 || sum.Steps[0].Step != 5 {
		t.Fatalf("resumed run did steps %+v, want 5 and 6", sum.Steps)
	}
	for _, want := range []string{"checkpoint of step 4", "checkpoint of step 3", "replaying committed steps 4..4"} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("the restarted coordinator's log does not mention %q", want)
		}
	}
	for i, w := range wantLoss {
		if g, ok := got[int64(i+1)]; !ok || math.Float64bits(g) != math.Float64bits(w) {
			t.Fatalf("losses across the restart differ from the single-process trainer:\n got %v\nwant %v", got, wantLoss)
		}
	}
	checkParams(t, sum.Checkpoint, wantParams)
	checkCommits(t, cl.endpoints, job, steps)
	for _, f := range []string{filepath.Join(worker.StepDir(victim, 1), "keep"), filepath.Join(victim, "precious", "keep"), filepath.Join(worker.StepDir(victim, 5), "keep")} {
		if _, err := os.Stat(f); err != nil {
			t.Errorf("a forged listing cost a file outside the checkpoint root: %v", err)
		}
	}
	for reason, min := range map[string]float64{metrics.SkipCorrupt: 1, metrics.SkipOutsideRoot: 2} {
		if n := metricstest.Value(t, reg, "stagecoach_coordinator_checkpoints_skipped_total", "reason", reason); n < min {
			t.Errorf("checkpoints skipped as %s: %v, want at least %v", reason, n, min)
		}
	}
}

func sprintf(f string, a ...any) string { return fmt.Sprintf(f, a...) }

// TestCheckpointDirOutsideWorkerRootFailsFast gives the coordinator a
// checkpoint directory outside its workers' checkpoint root: the first
// checkpoint is refused by every worker, and the run stops at once with
// an error saying so, rather than retrying a refusal.
func TestCheckpointDirOutsideWorkerRootFailsFast(t *testing.T) {
	corpus := writeCorpus(t)
	const job = "root-mismatch"
	cl := startCluster(t, job, 2)
	elsewhere := t.TempDir()
	co, err := coordinator.New(coordinator.Config{Simulator: sim.Simulator{}, Job: job, Endpoints: cl.endpoints, TTL: 2, Workers: 2,
		Schedule: "gpipe", Train: tinyTrain(2), Steps: 3, CorpusDir: corpus, OutDir: t.TempDir(), CheckpointDir: elsewhere,
		CheckpointEvery: 1, Checkpoint: true})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	_, err = co.Run(ctx)
	if err == nil || !strings.Contains(err.Error(), "outside the worker's checkpoint root") || !strings.Contains(err.Error(), "--checkpoint-root") {
		t.Fatalf("run with the checkpoint dir outside the workers' root: %v", err)
	}
	if es, _ := os.ReadDir(elsewhere); len(es) != 0 {
		t.Errorf("the workers wrote %d entries outside their root", len(es))
	}
	checkCommits(t, cl.endpoints, job, 0)
}

// TestResumeWithEveryCheckpointCorruptReplaysFromTheSeed damages stage 1's
// shard in every listed checkpoint, so on resume worker 0 loads each of
// them while worker 1 refuses it: with none left, every worker is reset
// to the seed and all committed steps are replayed. The run still ends
// with the single-process trainer's parameters bit for bit (a worker left
// holding a checkpoint it loaded would break the replay).
func TestResumeWithEveryCheckpointCorruptReplaysFromTheSeed(t *testing.T) {
	corpus := writeCorpus(t)
	const job, steps = "resume-all-corrupt", 5
	tc := tinyTrain(2)
	_, wantParams := reference(t, tc, corpus, steps)
	cl := startCluster(t, job, 2)
	var logs strings.Builder
	var mu sync.Mutex
	run := func(stopAfter int64) (*coordinator.Summary, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		co, err := coordinator.New(coordinator.Config{Simulator: sim.Simulator{}, Job: job, Endpoints: cl.endpoints, TTL: 2, Workers: 2,
			Schedule: "gpipe", Train: tc, Steps: steps, CorpusDir: corpus, OutDir: t.TempDir(), CheckpointDir: cl.root,
			CheckpointEvery: 1, Checkpoint: true,
			Logf: func(f string, a ...any) {
				mu.Lock()
				defer mu.Unlock()
				fmt.Fprintf(&logs, f+"\n", a...)
			},
			OnStep: func(r coordinator.StepReport) {
				if r.Step == stopAfter {
					cancel()
				}
			}})
		if err != nil {
			t.Fatal(err)
		}
		return co.Run(ctx)
	}
	if _, err := run(3); err == nil {
		t.Fatal("stopped run reported success")
	}
	for step := int64(1); step <= 3; step++ {
		path := filepath.Join(worker.StepDir(cl.root, step), model.ShardFile(1))
		b, err := os.ReadFile(path)
		if os.IsNotExist(err) {
			continue // retired
		}
		if err != nil {
			t.Fatal(err)
		}
		b[len(b)-1] ^= 0x80
		if err := os.WriteFile(path, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	sum, err := run(0)
	if err != nil {
		t.Fatalf("%v\n%s", err, logs.String())
	}
	for _, want := range []string{"no listed checkpoint loads", "replaying committed steps 1..3"} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("the log does not say %q:\n%s", want, logs.String())
		}
	}
	checkParams(t, sum.Checkpoint, wantParams)
	checkCommits(t, cl.endpoints, job, steps)
}
