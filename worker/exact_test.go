package worker_test

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"path/filepath"
	"testing"
	"time"

	"stagecoach/model"
	pb "stagecoach/proto"
	"stagecoach/scheduler"
	"stagecoach/worker"
	"stagecoach/worker/workertest"
)

const testJob = "job-test"

func trainConfig(layers, m, b int) model.TrainConfig {
	return model.TrainConfig{
		Model:          model.Config{Layers: layers, Dim: 16, Heads: 2, Ctx: 8, Seed: 3},
		Stages:         1,
		Layout:         model.HeadLast,
		Microbatches:   m,
		MicrobatchSize: b,
		Optim:          model.OptimConfig{Kind: "adamw", TotalSteps: 10, Warmup: 2},
	}
}

// stepWindows draws one step's microbatch windows deterministically.
func stepWindows(seed uint64, step, m, b, ctx, vocab int) [][]int32 {
	r := rand.New(rand.NewPCG(seed, uint64(step)))
	out := make([][]int32, m)
	for mb := range out {
		w := make([]int32, b*(ctx+1))
		for i := range w {
			if i > 0 && r.IntN(4) != 0 {
				w[i] = (w[i-1] + 1) % int32(vocab)
			} else {
				w[i] = int32(r.IntN(vocab))
			}
		}
		out[mb] = w
	}
	return out
}

// feed hands windows to Trainer.TrainStep in ascending microbatch order.
func feed(windows [][]int32) func([]int32) error {
	next := 0
	return func(dst []int32) error {
		copy(dst, windows[next])
		next++
		return nil
	}
}

// stepBoth runs step n over the same windows (drawn from seed) on the
// driven workers and on the single-process trainer, microbatches of
// m x b sequences, and returns both results.
func stepBoth(t *testing.T, ctx context.Context, d *workertest.Driver, ref *model.Trainer, seed uint64, n, m, b int) (*workertest.Result, model.StepResult) {
	t.Helper()
	w := stepWindows(seed, n, m, b, ref.Cfg.Model.Ctx, ref.Pipe.Cfg.Vocab)
	got, err := d.Iterate(ctx, int64(n), w)
	if err != nil {
		t.Fatalf("step %d: %v", n, err)
	}
	want, err := ref.TrainStep(feed(w))
	if err != nil {
		t.Fatal(err)
	}
	return got, want
}

type setup struct {
	schedule                    string
	stages, replicas, mbs, size int
	layers                      int
	// allReduce, when set, replaces the plan's all-reduce algorithm.
	allReduce string
}

func (s setup) String() string {
	name := fmt.Sprintf("%s/p%d-r%d-m%d", s.schedule, s.stages, s.replicas, s.mbs)
	if s.allReduce != "" {
		name += "-" + s.allReduce
	}
	return name
}

// distributed runs the same training on real workers and in the
// single-process trainer, step by step, and returns both sides.
func distributed(t *testing.T, su setup, steps int, check func(step int, got *workertest.Result, want model.StepResult)) (*workertest.Cluster, *workertest.Driver, *model.Trainer) {
	t.Helper()
	cfg := trainConfig(su.layers, su.mbs, su.size)
	ref, err := model.NewTrainer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	plan, err := scheduler.Generate(su.schedule, scheduler.Spec{Stages: su.stages, Replicas: su.replicas, Microbatches: su.mbs, Layers: su.layers, Samples: su.size})
	if err != nil {
		t.Fatal(err)
	}
	if su.allReduce != "" {
		for i := range plan.Stages {
			plan.Stages[i].AllReduce = su.allReduce
		}
	}
	c := workertest.Start(t, len(plan.Workers), testJob, nil)
	d := &workertest.Driver{Clients: workertest.Dial(t, c.Addrs), Peers: c.Addrs, Plan: plan, Train: ref.Cfg,
		Fence: &pb.Fence{Job: testJob, LeaderRev: 7, Epoch: 1}}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := d.Configure(ctx, nil); err != nil {
		t.Fatal(err)
	}
	for step := 1; step <= steps; step++ {
		got, want := stepBoth(t, ctx, d, ref, 11, step, su.mbs, su.size)
		check(step, got, want)
	}
	return c, d, ref
}

// checkpointParams saves every worker's shards and reads them back by
// tensor name (parameters and optimizer moments).
func checkpointParams(t *testing.T, c *workertest.Cluster, d *workertest.Driver, step int64) map[string][]float32 {
	t.Helper()
	out := map[string][]float32{}
	for i, cl := range d.Clients {
		r, err := cl.SaveCheckpoint(context.Background(), &pb.CheckpointRequest{Fence: d.Fence, Dir: "ckpt", Step: step})
		if err != nil {
			t.Fatalf("worker %d: save: %v", i, err)
		}
		for _, f := range r.GetFiles() {
			if filepath.Dir(f) != worker.StepDir(filepath.Join(c.Dirs[i], "ckpt"), step) {
				t.Errorf("checkpoint file %s outside the step directory", f)
			}
			ts, _, err := model.ReadSafetensorsFile(f)
			if err != nil {
				t.Fatal(err)
			}
			for _, ts := range ts {
				out[ts.Name] = ts.Data
			}
		}
	}
	return out
}

func referenceParams(ref *model.Trainer) map[string][]float32 {
	out := map[string][]float32{}
	for _, st := range ref.States() {
		out[st.T.Name] = st.T.W
		out["optim.m."+st.T.Name] = st.M
		out["optim.v."+st.T.Name] = st.V
	}
	return out
}

func TestPipelineMatchesTrainerBitForBit(t *testing.T) {
	for _, su := range []setup{
		{schedule: "gpipe", stages: 2, replicas: 1, mbs: 4, size: 2, layers: 4},
		{schedule: "gpipe", stages: 3, replicas: 1, mbs: 4, size: 2, layers: 4},
		{schedule: "1f1b", stages: 2, replicas: 1, mbs: 4, size: 2, layers: 4},
		{schedule: "1f1b", stages: 3, replicas: 1, mbs: 5, size: 2, layers: 4},
		{schedule: "interleaved", stages: 2, replicas: 1, mbs: 4, size: 2, layers: 4},
		{schedule: "zb-h1", stages: 3, replicas: 1, mbs: 6, size: 2, layers: 6},
		{schedule: "zb-h2", stages: 2, replicas: 1, mbs: 4, size: 2, layers: 4},
		{schedule: "gpipe-recompute", stages: 2, replicas: 1, mbs: 3, size: 1, layers: 2},
		// The workbench schedules: looped and V placements (the V puts
		// the head stage on worker 0, beside stage 0), split backwards,
		// and dualpipe-v's overlapped pairs, run forward then backward.
		{schedule: "looped-bfs", stages: 2, replicas: 1, mbs: 4, size: 1, layers: 4},
		{schedule: "interleaved-zb", stages: 2, replicas: 1, mbs: 4, size: 1, layers: 4},
		{schedule: "zb-v", stages: 2, replicas: 1, mbs: 4, size: 1, layers: 4},
		{schedule: "v-half", stages: 3, replicas: 1, mbs: 4, size: 1, layers: 6},
		{schedule: "v-min", stages: 3, replicas: 1, mbs: 4, size: 1, layers: 6},
		{schedule: "dualpipe-v", stages: 2, replicas: 1, mbs: 6, size: 1, layers: 4},
		{schedule: "zb-v", stages: 2, replicas: 2, mbs: 4, size: 1, layers: 4},
		// Replicated stages reduce in microbatch order (ordered.go).
		{schedule: "gpipe", stages: 2, replicas: 2, mbs: 4, size: 2, layers: 4},
		{schedule: "1f1b", stages: 2, replicas: 2, mbs: 6, size: 2, layers: 4},
		{schedule: "gpipe", stages: 1, replicas: 3, mbs: 6, size: 1, layers: 2},
		{schedule: "gpipe", stages: 2, replicas: 3, mbs: 4, size: 1, layers: 2},
		{schedule: "interleaved", stages: 2, replicas: 2, mbs: 4, size: 2, layers: 4},
		{schedule: "zb-h1", stages: 2, replicas: 2, mbs: 5, size: 2, layers: 4},
	} {
		t.Run(su.String(), func(t *testing.T) {
			const steps = 4
			c, d, ref := distributed(t, su, steps, func(step int, got *workertest.Result, want model.StepResult) {
				if math.Float64bits(got.Loss) != math.Float64bits(want.Loss) || math.Float64bits(got.GradNorm) != math.Float64bits(want.GradNorm) {
					t.Errorf("step %d: loss %v norm %v, trainer %v %v", step, got.Loss, got.GradNorm, want.Loss, want.GradNorm)
				}
				if got.LR != want.LR {
					t.Errorf("step %d: lr %v, trainer %v", step, got.LR, want.LR)
				}
			})
			got, want := checkpointParams(t, c, d, steps), referenceParams(ref)
			if len(got) != len(want) {
				t.Fatalf("%d tensors in checkpoints, trainer has %d", len(got), len(want))
			}
			for name, w := range want {
				g := got[name]
				if len(g) != len(w) {
					t.Fatalf("%s: %d elements, want %d", name, len(g), len(w))
				}
				for i := range w {
					if math.Float32bits(g[i]) != math.Float32bits(w[i]) {
						t.Fatalf("%s[%d] = %v, trainer %v (not bit-identical)", name, i, g[i], w[i])
					}
				}
			}
			if su.replicas > 1 {
				sameAcrossReplicas(t, c, d, steps)
			}
		})
	}
}
