package faulttest

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"math"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"stagecoach/coordinator"
	"stagecoach/internal/etcdx"
	"stagecoach/model"
	"stagecoach/planner"
	"stagecoach/sim"
	"stagecoach/worker"
)

// shardDigest hashes a stage's shard file of a checkpoint (every tensor,
// in file order) and returns its restored_from_step metadata.
func shardDigest(t *testing.T, m coordinator.CheckpointManifest, stage int) ([32]byte, string) {
	t.Helper()
	ts, meta, err := model.ReadSafetensorsFile(filepath.Join(worker.StepDir(m.Base, m.Step), model.ShardFile(stage)))
	if err != nil {
		t.Errorf("checkpoint %d stage %d: %v", m.Step, stage, err)
		return [32]byte{}, ""
	}
	h := sha256.New()
	for _, x := range ts {
		h.Write([]byte(x.Name))
		for _, v := range x.Data {
			_ = binary.Write(h, binary.LittleEndian, math.Float32bits(v))
		}
	}
	var d [32]byte
	copy(d[:], h.Sum(nil))
	return d, meta["restored_from_step"]
}

// TestSkipPipeStageWithoutWorkersIsSkipped kills -9 both workers of a
// SkipPipe stage. The stage becomes vacant: the iteration is re-pathed
// with every microbatch skipping it, training goes on, and every
// checkpoint taken meanwhile carries the stage's state of the newest
// checkpoint before the loss (so each still loads whole). When a new
// worker registers it takes the vacant stage at the next iteration
// boundary, loaded from that state, and the stage trains again.
func TestSkipPipeStageWithoutWorkersIsSkipped(t *testing.T) {
	const job, steps, stages = "vacant-skippipe", 14, 3
	e := newEnv(t, job)
	e.startWorkers(t, "w0", "w1", "w2", "w3", "w4", "w5")
	tc := tiny(3, 4)
	var clock faultClock
	var victims []string
	var mu sync.Mutex
	digests := map[int64][32]byte{}
	restored := map[int64]string{}
	stop := e.watchCheckpoints(t, stages, func(m coordinator.CheckpointManifest) {
		d, from := shardDigest(t, m, 2)
		mu.Lock()
		digests[m.Step], restored[m.Step] = d, from
		mu.Unlock()
	})
	cfg := coordinator.Config{Simulator: sim.Simulator{}, Job: job, Endpoints: e.endpoints, TTL: ttl, Workers: 6, Stages: stages, Schedule: planner.SkipPipe,
		Train: tc, Steps: steps, CorpusDir: e.corpus, OutDir: t.TempDir(), CheckpointDir: e.root, Checkpoint: true, CheckpointEvery: 2,
		RPCTimeout: 30 * time.Second, OnRecovery: clock.onRecovery, Cluster: slowLinks("w0", "w1", "w2", "w3", "w4", "w5", "w9"),
		OnStep: func(r coordinator.StepReport) {
			switch r.Step {
			case 3:
				// Both die before step 4 starts (killed and reaped here),
				// so the failure of step 4 finds the stage empty. Killed
				// one after the other mid-step, the coordinator may re-path
				// around the first and then restore when the second dies.
				victims = []string{stageWorker(t, e, 2, 0), stageWorker(t, e, 2, 1)}
				clock.inject(func() {
					for _, v := range victims {
						e.workers[v].signal(syscall.SIGKILL)
					}
					for _, v := range victims {
						<-e.workers[v].done
					}
				})
			case 7:
				// A newcomer registers while stage 2 is vacant.
				e.startWorkers(t, "w9")
			}
		}}
	sum := runCoordinator(t, cfg, 120*time.Second)
	checkSlowLinks(t, sum)
	puts := stop()
	recs := clock.report(t, "kill -9 both workers of a SkipPipe stage")
	e.checkCommits(t, steps)

	var vacatedAt, joinedAt int64
	for _, r := range recs {
		if r.Kind == "repath" && vacatedAt == 0 {
			if len(r.Lost) != 2 || !slices.Contains(r.Lost, victims[0]) || !slices.Contains(r.Lost, victims[1]) {
				t.Errorf("re-path lost %v, want both of %v", r.Lost, victims)
			}
			if r.Workers != 4 {
				t.Errorf("re-path continued on %d workers, want 4", r.Workers)
			}
			if !slices.Equal(r.Vacant, []int{2}) {
				t.Errorf("re-path reports vacant stages %v, want [2]", r.Vacant)
			}
			vacatedAt = r.Step
		}
		if r.Kind == "rejoin" && slices.Contains(r.Joined, "w9") {
			joinedAt = r.Step
		}
	}
	if vacatedAt != 4 || joinedAt == 0 {
		t.Fatalf("recoveries %+v: want a re-path at step 4 leaving stage 2 vacant, then w9 rejoining", recs)
	}
	checkRecorded(t, e, sum)
	// The re-pathed plan left stage 2 to nobody; the rejoin gave it to w9.
	for epoch, want := range map[int64]string{2: "", 3: "w9"} {
		var m coordinator.PlanManifest
		if ok, err := etcdx.GetJSON(context.Background(), e.cli, e.keys.Plan(epoch), &m); err != nil || !ok {
			t.Fatalf("plan of epoch %d: %v (found %v)", epoch, err, ok)
		}
		var holders []string
		for _, w := range m.Workers {
			if slices.Contains(w.Stages, 2) {
				holders = append(holders, w.Name)
			}
		}
		if want == "" && len(holders) != 0 || want != "" && !slices.Equal(holders, []string{want}) {
			t.Errorf("epoch %d: stage 2 held by %v, want %q", epoch, holders, want)
		}
	}
	if sum.Workers != 5 {
		t.Errorf("finished on %d workers, want 5 (4 survivors and w9)", sum.Workers)
	}
	if !slices.Equal(puts, []int64{2, 4, 6, 8, 10, 12, 14}) {
		t.Errorf("listed checkpoints %v, want every second step", puts)
	}
	// Checkpoints of the vacancy (after step 4 failed, before w9 took
	// stage 2 at joinedAt) carry step 2's stage 2 unchanged; later ones
	// hold a trained stage 2 again.
	mu.Lock()
	defer mu.Unlock()
	for _, s := range puts {
		switch {
		case s <= 2:
			if restored[s] != "" {
				t.Errorf("checkpoint %d: stage 2 restored from %q, want its own state", s, restored[s])
			}
		case s < joinedAt:
			if digests[s] != digests[2] || restored[s] != "2" {
				t.Errorf("checkpoint %d (stage 2 vacant): restored from %q, same state as step 2: %v; want step 2's state", s, restored[s], digests[s] == digests[2])
			}
		case s > joinedAt:
			if digests[s] == digests[2] || restored[s] != "" {
				t.Errorf("checkpoint %d (after w9 took stage 2 before step %d): stage 2 restored from %q, unchanged since step 2: %v; want it trained again", s, joinedAt, restored[s], digests[s] == digests[2])
			}
		}
	}
	t.Logf("stage 2 vacant for steps %d..%d (checkpoints carried step 2's state), trained again from step %d", vacatedAt, joinedAt-1, joinedAt)
	for _, st := range sum.Steps {
		if math.IsNaN(st.Loss) || math.IsInf(st.Loss, 0) || st.Loss <= 0 {
			t.Errorf("step %d loss %v", st.Step, st.Loss)
		}
	}
}

// TestVacantBeforeAnyCheckpointCarriesTheSeed empties a SkipPipe stage
// before the first checkpoint: the checkpoint taken during the vacancy
// must hold that stage as a freshly configured worker holds it (seeded
// parameters, zero optimizer moments), marked restored from step 0.
func TestVacantBeforeAnyCheckpointCarriesTheSeed(t *testing.T) {
	const job, steps, stages = "vacant-seed", 3, 3
	e := newEnv(t, job)
	e.startWorkers(t, "w0", "w1", "w2", "w3", "w4", "w5")
	tc := tiny(3, 4)
	var carried []model.STensor
	var from string
	stop := e.watchCheckpoints(t, stages, func(m coordinator.CheckpointManifest) {
		if m.Step != steps {
			return
		}
		ts, meta, err := model.ReadSafetensorsFile(filepath.Join(worker.StepDir(m.Base, m.Step), model.ShardFile(2)))
		if err != nil {
			t.Error(err)
			return
		}
		carried, from = ts, meta["restored_from_step"]
	})
	cfg := coordinator.Config{Simulator: sim.Simulator{}, Job: job, Endpoints: e.endpoints, TTL: ttl, Workers: 6, Stages: stages, Schedule: planner.SkipPipe,
		Train: tc, Steps: steps, CorpusDir: e.corpus, OutDir: t.TempDir(), CheckpointDir: e.root, Checkpoint: true, CheckpointEvery: steps,
		RPCTimeout: 30 * time.Second,
		OnStep: func(r coordinator.StepReport) {
			if r.Step == 1 {
				for _, v := range []string{stageWorker(t, e, 2, 0), stageWorker(t, e, 2, 1)} {
					e.workers[v].signal(syscall.SIGKILL)
					<-e.workers[v].done
				}
			}
		}}
	runCoordinator(t, cfg, 90*time.Second)
	stop()
	if from != "0" {
		t.Fatalf("checkpoint of step %d: stage 2 restored from %q, want the seed (0)", steps, from)
	}
	// The seeded stage 2, as a worker configured for this model has it.
	specs, err := model.Split(tc.Model.Layers, stages, model.HeadFirst)
	if err != nil {
		t.Fatal(err)
	}
	sh, err := model.NewShard(tc.Model, specs[2])
	if err != nil {
		t.Fatal(err)
	}
	opt, err := model.NewOptimizer(tc.Optim, sh.Params())
	if err != nil {
		t.Fatal(err)
	}
	want := map[string][]float32{}
	for _, st := range model.StateTensors(opt.States) {
		want[st.Name] = st.Data
	}
	if len(carried) != len(want) {
		t.Fatalf("carried shard holds %d tensors, the seeded one %d", len(carried), len(want))
	}
	for _, c := range carried {
		w, ok := want[c.Name]
		if !ok || len(w) != len(c.Data) {
			t.Fatalf("carried tensor %s has no seeded counterpart of its size", c.Name)
		}
		for i := range w {
			if math.Float32bits(w[i]) != math.Float32bits(c.Data[i]) {
				t.Fatalf("carried %s[%d] = %v, seeded %v", c.Name, i, c.Data[i], w[i])
			}
		}
	}
}
