package coordinator_test

import (
	"context"
	"fmt"
	"math"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"stagecoach/coordinator"
	"stagecoach/scheduler"
	"stagecoach/sim"
	"stagecoach/worker"
)

// slowMiddle prices three nodes w0..w2 on one region (free links), w1 at
// half speed: the balancer gives it fewer layers.
const slowMiddle = `name: slow-middle
compute:
  layer_forward_s: 0.01
  backward_ratio: 2
  loss_layers: 1
  activation_bytes_per_sample: 0
  gradient_bytes_per_layer: 0
nodes:
  - {name: w0, speed: 1}
  - {name: w1, speed: 0.5}
  - {name: w2, speed: 1}
`

// planLayers reads the layers per stage of the plan a run ended with.
func planLayers(t *testing.T, path string) []int {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	p, err := scheduler.Decode(f)
	if err != nil {
		t.Fatal(err)
	}
	var out []int
	for _, s := range p.Stages {
		out = append(out, s.Layers)
	}
	return out
}

// TestBalancedStagesAreBitIdenticalToSingleProcess trains with the
// balancer's uneven split (real workers over loopback, embedded etcd):
// losses and every parameter and moment match the single-process trainer
// bit for bit, for GPipe and 1F1B.
func TestBalancedStagesAreBitIdenticalToSingleProcess(t *testing.T) {
	corpus := writeCorpus(t)
	const steps, layers = 3, 6
	for _, schedule := range []string{"gpipe", "1f1b"} {
		t.Run(schedule, func(t *testing.T) {
			job := "balance-" + schedule
			tc := tinyTrain(layers)
			wantLoss, wantParams := reference(t, tc, corpus, steps)
			cl := startCluster(t, job, 3)
			var got []float64
			co, err := coordinator.New(coordinator.Config{Simulator: sim.Simulator{},
				Job: job, Endpoints: cl.endpoints, TTL: 2, Workers: 3, Schedule: schedule, Balance: true,
				Cluster: []byte(slowMiddle), Train: tc, Steps: steps, CorpusDir: corpus, OutDir: t.TempDir(),
				CheckpointDir: cl.root, Checkpoint: true,
				OnStep: func(r coordinator.StepReport) { got = append(got, r.Loss) },
			})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			sum, err := co.Run(ctx)
			if err != nil {
				t.Fatal(err)
			}
			split := planLayers(t, sum.PlanPath)
			if len(split) != 3 || !(split[1] < split[0] && split[1] < layers/3) {
				t.Fatalf("layers per stage %v: want fewer on the half-speed w1 than the even split's %d", split, layers/3)
			}
			if len(got) != steps {
				t.Fatalf("%d losses reported, want %d", len(got), steps)
			}
			for i := range wantLoss {
				if math.Float64bits(got[i]) != math.Float64bits(wantLoss[i]) {
					t.Fatalf("losses differ from the single-process trainer:\n got %v\nwant %v", got, wantLoss)
				}
			}
			checkParams(t, sum.Checkpoint, wantParams)
			checkCommits(t, cl.endpoints, job, steps)
		})
	}
}

// TestResumeCutsACheckpointToTheNewSplit stops a balanced run after a
// checkpoint and resumes the job on the even split: the coordinator cuts
// the checkpoint's shards to the plan's ranges, and the whole run still
// matches the single-process trainer bit for bit.
func TestResumeCutsACheckpointToTheNewSplit(t *testing.T) {
	corpus := writeCorpus(t)
	const job, steps, layers = "balance-resume", 4, 6
	tc := tinyTrain(layers)
	wantLoss, wantParams := reference(t, tc, corpus, steps)
	cl := startCluster(t, job, 3)
	out := t.TempDir()
	var mu sync.Mutex
	var logs strings.Builder
	got := map[int64]float64{}
	run := func(balance bool, stopAfter int64) (*coordinator.Summary, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		co, err := coordinator.New(coordinator.Config{Simulator: sim.Simulator{},
			Job: job, Endpoints: cl.endpoints, TTL: 2, Workers: 3, Schedule: "gpipe", Balance: balance,
			Cluster: []byte(slowMiddle), Train: tc, Steps: steps, CorpusDir: corpus, OutDir: out,
			CheckpointDir: cl.root, Checkpoint: true, CheckpointEvery: 1,
			Logf: func(f string, a ...any) {
				mu.Lock()
				defer mu.Unlock()
				fmt.Fprintf(&logs, f+"\n", a...)
			},
			OnStep: func(r coordinator.StepReport) {
				got[r.Step] = r.Loss
				if r.Step == stopAfter {
					cancel()
				}
			},
		})
		if err != nil {
			t.Fatal(err)
		}
		return co.Run(ctx)
	}
	if _, err := run(true, 2); err == nil {
		t.Fatal("stopped run reported success")
	}
	sum, err := run(false, 0)
	if err != nil {
		t.Fatalf("%v\n%s", err, logs.String())
	}
	if split := planLayers(t, sum.PlanPath); !slices.Equal(split, []int{2, 2, 2}) {
		t.Fatalf("resumed run's layers per stage %v, want the even split", split)
	}
	if !strings.Contains(logs.String(), "loading a cut of it") {
		t.Errorf("the resumed run did not load a cut of the balanced checkpoint:\n%s", logs.String())
	}
	for i, w := range wantLoss {
		if g, ok := got[int64(i+1)]; !ok || math.Float64bits(g) != math.Float64bits(w) {
			t.Fatalf("losses across the re-split differ from the single-process trainer:\n got %v\nwant %v", got, wantLoss)
		}
	}
	checkParams(t, sum.Checkpoint, wantParams)
	checkCommits(t, cl.endpoints, job, steps)
}

// TestDriftRebalancesAndStaysExact starts balanced stages from a cost
// model that knows nothing of w1 being slow (it emulates a quarter of
// the machine's speed): the first calibration drifts, the replan gives
// w1 fewer layers, the stages' parameters and optimizer state move
// through a checkpoint cut to the new ranges, and the run stays the
// single-process trainer's bit for bit.
func TestDriftRebalancesAndStaysExact(t *testing.T) {
	corpus := writeCorpus(t)
	const steps, layers, job = 6, 6, "rebalance"
	tc := tinyTrain(layers)
	wantLoss, wantParams := reference(t, tc, corpus, steps)
	cl := startClusterWith(t, job, 3, func(i int, c *worker.Config) {
		if i == 1 {
			c.EmulateSpeed = 0.25
		}
	})
	// Uniform nodes computing a billion times faster than any real
	// forward: the even split, and a first calibration far off.
	wrong := &sim.Cluster{Name: "wrong", AnyNode: true, Compute: sim.Compute{LayerForwardS: 1e-12}}
	if err := wrong.Validate(); err != nil {
		t.Fatal(err)
	}
	var got []float64
	var mu sync.Mutex
	var logs strings.Builder
	co, err := coordinator.New(coordinator.Config{Simulator: sim.Simulator{},
		Job: job, Endpoints: cl.endpoints, TTL: 2, Workers: 3, Schedule: "gpipe", Train: tc, Steps: steps,
		CorpusDir: corpus, OutDir: t.TempDir(), CheckpointDir: cl.root, Checkpoint: true, Costs: wrong,
		Balance: true, ReplanDrift: 20, ReplanWarmup: 1,
		OnStep: func(r coordinator.StepReport) { got = append(got, r.Loss) },
		Logf: func(f string, a ...any) {
			mu.Lock()
			defer mu.Unlock()
			fmt.Fprintf(&logs, f+"\n", a...)
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	sum, err := co.Run(ctx)
	if err != nil {
		t.Fatalf("%v\n%s", err, logs.String())
	}
	if len(sum.Replans) < 1 {
		t.Fatalf("no replan:\n%s", logs.String())
	}
	split := planLayers(t, sum.PlanPath)
	if len(split) != 3 || !(split[1] < layers/3) {
		t.Fatalf("layers per stage %v after the replan: want fewer than %d on the slow w1\n%s", split, layers/3, logs.String())
	}
	t.Logf("layers per stage after the replan: %v", split)
	if !strings.Contains(logs.String(), "moves through a checkpoint") {
		t.Errorf("the replan did not move the stages' state:\n%s", logs.String())
	}
	for i := range wantLoss {
		if i >= len(got) || math.Float64bits(got[i]) != math.Float64bits(wantLoss[i]) {
			t.Fatalf("losses differ from the single-process trainer:\n got %v\nwant %v\n%s", got, wantLoss, logs.String())
		}
	}
	checkParams(t, sum.Checkpoint, wantParams)
	checkCommits(t, cl.endpoints, job, steps)
}
