package coordinator_test

import (
	"context"
	"math"
	"testing"
	"time"

	"stagecoach/coordinator"
	"stagecoach/model"
	"stagecoach/sim"
)

// A plan made with a cost model far from what the workers measure is
// replaced exactly once (new epoch, between two steps), and training
// continues bit for bit as the single-process trainer's.
func TestDriftReplansOnceAndStaysExact(t *testing.T) {
	corpus := writeCorpus(t)
	const steps, job = 8, "drift"
	tc := tinyTrain(3)
	wantLoss, wantParams := reference(t, tc, corpus, steps)
	cl := startCluster(t, job, 3)
	// Compute a billion times faster than any real forward: the first
	// calibration drifts by orders of magnitude past the threshold.
	wrong := &sim.Cluster{Name: "wrong", AnyNode: true, Compute: sim.Compute{LayerForwardS: 1e-12}}
	if err := wrong.Validate(); err != nil {
		t.Fatal(err)
	}
	var got []float64
	var logs []string
	co, err := coordinator.New(coordinator.Config{Simulator: sim.Simulator{},
		Job: job, Endpoints: cl.endpoints, TTL: 2, Workers: 3, Schedule: "gpipe", Train: tc, Steps: steps,
		CorpusDir: corpus, OutDir: t.TempDir(), CheckpointDir: cl.root, Checkpoint: true, Costs: wrong,
		// Far above what timing noise on a loaded machine produces, far
		// below the injected error.
		ReplanDrift: 20, ReplanWarmup: 1,
		OnStep: func(r coordinator.StepReport) { got = append(got, r.Loss) },
		Logf:   func(f string, a ...any) { logs = append(logs, f) },
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
	if len(sum.Replans) != 1 {
		t.Fatalf("%d replans (%+v), want exactly 1", len(sum.Replans), sum.Replans)
	}
	if r := sum.Replans[0]; r.AfterStep != 2 || r.Epoch != 2 || r.Drift <= 20 || sum.Epoch != 2 {
		t.Errorf("replan %+v, summary epoch %d: want after step 2 (first measured step), epoch 2, drift > 20", r, sum.Epoch)
	}
	for i := range wantLoss {
		if i >= len(got) || math.Float64bits(got[i]) != math.Float64bits(wantLoss[i]) {
			t.Fatalf("losses differ from the single-process trainer:\n got %v\nwant %v", got, wantLoss)
		}
	}
	checkParams(t, sum.Checkpoint, wantParams)
	checkCommits(t, cl.endpoints, job, steps)
	if sum.CostModel == nil || sum.CostModel.Compute.LayerForwardS <= 1e-9 {
		t.Errorf("no calibrated cost model in the summary: %+v", sum.CostModel)
	}
}

// Scaling keeps every link's place relative to the others: a microbatch
// hop of the model costs scale x the preset's own workload hop.
func TestScaleLinksKeepsRatios(t *testing.T) {
	geo := sim.SkipPipeGeo()
	if err := geo.Validate(); err != nil {
		t.Fatal(err)
	}
	m := model.Config{Layers: 6, Dim: 16, Heads: 2, Ctx: 32}
	const scale, samples = 0.01, 4
	sc, err := coordinator.ScaleLinks(geo, scale, m, samples)
	if err != nil {
		t.Fatal(err)
	}
	refBytes := 8*geo.Compute.ActivationBytesPerSample + geo.Compute.MessageHeaderBytes
	bytes := samples * coordinator.ActivationBytes(m)
	for _, pair := range [][2]int{{0, 1}, {0, 11}, {6, 10}, {2, 5}} {
		rb, rl := geo.HopTime(pair[0], pair[1], refBytes)
		b, l := sc.HopTime(pair[0], pair[1], bytes)
		if want := scale * (rb + rl); math.Abs(b+l-want) > 1e-9*want {
			t.Errorf("hop %v: %v s scaled, want %v (%v x %v)", pair, b+l, want, scale, rb+rl)
		}
	}
	if _, err := coordinator.ScaleLinks(geo, 0, m, samples); err == nil {
		t.Error("link scale 0 accepted")
	}
}
