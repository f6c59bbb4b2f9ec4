package faulttest

import (
	"context"
	"encoding/binary"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	clientv3 "go.etcd.io/etcd/client/v3"

	"stagecoach/coordinator"
	"stagecoach/internal/failpoint"
	"stagecoach/internal/metrics"
	"stagecoach/internal/metrics/metricstest"
	"stagecoach/model"
	"stagecoach/sim"
	"stagecoach/worker"
)

// listedCheckpoints reads the checkpoint manifests etcd lists for the job.
func (e *env) listedCheckpoints(t *testing.T) []coordinator.CheckpointManifest {
	t.Helper()
	resp, err := e.cli.Get(context.Background(), e.keys.CheckpointsPrefix(), clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	var out []coordinator.CheckpointManifest
	for _, kv := range resp.Kvs {
		var m coordinator.CheckpointManifest
		if err := jsonUnmarshal(kv.Value, &m); err != nil {
			t.Fatalf("checkpoint manifest %s: %v", kv.Key, err)
		}
		out = append(out, m)
	}
	return out
}

// checkListedLoad loads every shard of every checkpoint etcd lists: each
// must parse, hold its step, and together cover all stages.
func checkListedLoad(t *testing.T, ms []coordinator.CheckpointManifest, stages int) {
	t.Helper()
	for _, m := range ms {
		seen := map[string]bool{}
		for s := range stages {
			path := filepath.Join(worker.StepDir(m.Base, m.Step), model.ShardFile(s))
			_, meta, err := model.ReadSafetensorsFile(path)
			if err != nil {
				t.Errorf("etcd lists the checkpoint of step %d, but its stage %d does not load: %v", m.Step, s, err)
				continue
			}
			if meta[model.MetaStep] != strconv.FormatInt(m.Step, 10) {
				t.Errorf("checkpoint of step %d: stage %d holds step %q", m.Step, s, meta[model.MetaStep])
			}
			seen[path] = true
		}
		for _, f := range m.Files {
			if !seen[f] {
				t.Errorf("checkpoint of step %d lists %s, which is no stage's shard", m.Step, f)
			}
		}
	}
}

// watchCheckpoints loads every checkpoint etcd lists the moment it is
// listed (checkListedLoad), calling seen, if set, with each manifest
// while its files are certainly there. The returned stop waits for the
// last listing and returns the listed steps in order.
func (e *env) watchCheckpoints(t *testing.T, stages int, seen func(coordinator.CheckpointManifest)) (stop func() []int64) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	watch := e.cli.Watch(ctx, e.keys.CheckpointsPrefix(), clientv3.WithPrefix())
	var puts []int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		for resp := range watch {
			for _, ev := range resp.Events {
				if ev.Type != clientv3.EventTypePut {
					continue
				}
				var m coordinator.CheckpointManifest
				if err := jsonUnmarshal(ev.Kv.Value, &m); err != nil {
					t.Errorf("checkpoint manifest %s: %v", ev.Kv.Key, err)
					continue
				}
				puts = append(puts, m.Step)
				checkListedLoad(t, []coordinator.CheckpointManifest{m}, stages)
				if seen != nil {
					seen(m)
				}
			}
		}
	}()
	return func() []int64 {
		time.Sleep(200 * time.Millisecond) // let the watch deliver the last put
		cancel()
		<-done
		return puts
	}
}

// TestCrashDuringCheckpointWrite crashes a worker process (SIGKILL from
// the checkpoint-write failpoint) after half of its shard of step 6 reached
// the disk. etcd must never list a checkpoint that does not load: at the
// moment of recovery step 6 is neither committed nor listed, the torn file
// sits only under its temporary name, the coordinator restores the
// checkpoint of step 4 onto a spare, and the run ends with gap-free commits
// and the fault-free parameters.
func TestCrashDuringCheckpointWrite(t *testing.T) {
	const job, steps, crashStep, stages = "crash-checkpoint", 10, 6, 4
	e := newEnv(t, job)
	e.startWorkers(t, "w0", "w1", "w3", "w9")
	e.startWorkersEnv(t, []string{failpoint.EnvVar + "=" + failpoint.CheckpointWrite + "=" + strconv.Itoa(crashStep)}, "w2")
	tc := tiny(4, 4)
	_, want := reference(t, tc, e.corpus, steps)
	out := t.TempDir()
	var clock faultClock
	// Every checkpoint etcd ever lists is loaded the moment it appears.
	stopWatch := e.watchCheckpoints(t, stages, nil)
	cfg := coordinator.Config{Simulator: sim.Simulator{}, Job: job, Endpoints: e.endpoints, TTL: ttl, Workers: 4, Stages: stages,
		Schedule: "gpipe", Train: tc, Steps: steps, CorpusDir: e.corpus, OutDir: out, CheckpointDir: e.root, Checkpoint: true,
		CheckpointEvery: 2, RPCTimeout: 30 * time.Second, ReplaceWait: time.Second, OnRecovery: clock.onRecovery,
		OnStep: func(r coordinator.StepReport) {
			if r.Step == crashStep-1 {
				clock.inject(func() {}) // the crash comes with the next step's checkpoint
			}
		}}
	sum := runCoordinator(t, cfg, 120*time.Second)
	puts := stopWatch()
	recs := clock.report(t, "crash during a checkpoint write")
	select {
	case <-e.workers["w2"].done:
	default:
		t.Fatal("w2 is still running: the failpoint did not fire")
	}

	if len(recs) == 0 || recs[0].Kind != "restore" || recs[0].Step != crashStep || !slices.Contains(recs[0].Lost, "w2") || recs[0].FromCheckpoint != crashStep-2 {
		t.Fatalf("recoveries %+v, want a restore of step %d from checkpoint %d that lost w2", recs, crashStep, crashStep-2)
	}
	if !slices.Equal(puts, []int64{2, 4, 6, 8, 10}) {
		t.Errorf("etcd listed checkpoints of steps %v, want each of 2, 4, 6, 8, 10 once (6 only after the recovery)", puts)
	}
	// The torn shard stays under its temporary name in step 6's directory
	// (retained: the newest three are 6, 8 and 10).
	torn, _ := filepath.Glob(filepath.Join(worker.StepDir(e.root, crashStep), ".shard-*.tmp-*"))
	if len(torn) != 1 {
		t.Fatalf("torn temporary shards of step %d: %v, want exactly one", crashStep, torn)
	}
	if _, _, err := model.ReadSafetensorsFile(torn[0]); err == nil {
		t.Errorf("the torn file %s loads: the crash did not tear it", torn[0])
	} else {
		t.Logf("the torn shard %s does not load (%v) and was never renamed or listed", filepath.Base(torn[0]), err)
	}

	e.checkCommits(t, steps)
	final := e.listedCheckpoints(t)
	checkListedLoad(t, final, stages)
	if len(final) == 0 || final[len(final)-1].Step != steps {
		t.Errorf("final listed checkpoints %+v, want the last at step %d", final, steps)
	}
	checkParams(t, sum.Checkpoint, want)
}

// flipFloatBits flips one mantissa bit in each of n float32 values of a
// shard's tensor data, leaving its size and header intact.
func flipFloatBits(t *testing.T, path string, n int) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	data := 8 + int(binary.LittleEndian.Uint64(b))
	if data+4*n > len(b) {
		t.Fatalf("%s has %d data bytes, fewer than %d floats", path, len(b)-data, n)
	}
	for i := range n {
		b[data+4*i+1] ^= 0x08
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// corruptHeader overwrites the start of a shard's JSON header, so it no
// longer parses; the size stays the same.
func corruptHeader(t *testing.T, path string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	copy(b[8:], "#garbage#")
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestCorruptCheckpointIsSkipped damages the newest checkpoint (64 float
// bits flipped in one shard's data, or its header overwritten; sizes
// unchanged) and then kills -9 a worker, so the coordinator restores onto
// a spare. The damaged checkpoint is detected by the worker that loads the
// shard (its SHA-256 is not the listed one), skipped and counted; the
// previous listed checkpoint is restored, the longer replay matches every
// committed loss bit for bit, and the final parameters equal the
// fault-free run's.
func TestCorruptCheckpointIsSkipped(t *testing.T) {
	for _, tt := range []struct {
		name    string
		corrupt func(t *testing.T, path string)
	}{
		{"64-bits-flipped", func(t *testing.T, path string) { flipFloatBits(t, path, 64) }},
		{"corrupt-header", corruptHeader},
	} {
		t.Run(tt.name, func(t *testing.T) {
			const steps, corruptAt, stages = 10, 6, 4
			job := "corrupt-" + tt.name
			e := newEnv(t, job)
			e.startWorkers(t, "w0", "w1", "w2", "w3", "w9")
			tc := tiny(4, 4)
			_, want := reference(t, tc, e.corpus, steps)
			reg := prometheus.NewRegistry()
			var clock faultClock
			damaged := filepath.Join(worker.StepDir(e.root, corruptAt), model.ShardFile(2))
			cfg := coordinator.Config{Simulator: sim.Simulator{}, Job: job, Endpoints: e.endpoints, TTL: ttl, Workers: 4, Stages: stages,
				Schedule: "gpipe", Train: tc, Steps: steps, CorpusDir: e.corpus, OutDir: t.TempDir(), CheckpointDir: e.root,
				Checkpoint: true, CheckpointEvery: 2, RPCTimeout: 30 * time.Second, ReplaceWait: time.Second,
				OnRecovery: clock.onRecovery, Metrics: metrics.NewCoordinator(reg),
				OnStep: func(r coordinator.StepReport) {
					if r.Step == corruptAt {
						// The checkpoint of this step is listed now.
						tt.corrupt(t, damaged)
						go clock.inject(func() { e.workers["w2"].signal(syscall.SIGKILL) })
					}
				}}
			sum := runCoordinator(t, cfg, 120*time.Second)
			recs := clock.report(t, "corrupt newest checkpoint ("+tt.name+") and kill -9 a worker")
			e.checkCommits(t, steps)
			if len(recs) == 0 || recs[0].Kind != "restore" || recs[0].FromCheckpoint != corruptAt-2 || recs[0].Replayed != 2 {
				t.Fatalf("recoveries %+v, want a restore from checkpoint %d replaying 2 steps (the damaged %d skipped)", recs, corruptAt-2, corruptAt)
			}
			if n := metricstest.Value(t, reg, "stagecoach_coordinator_checkpoints_skipped_total", "reason", metrics.SkipCorrupt); n < 1 {
				t.Errorf("checkpoints skipped as corrupt: %v, want at least 1", n)
			}
			checkParams(t, sum.Checkpoint, want)
		})
	}
}
