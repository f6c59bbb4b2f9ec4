package worker_test

import (
	"context"
	"fmt"
	"testing"

	"stagecoach/model"
	pb "stagecoach/proto"
	"stagecoach/scheduler/skippipe"
	"stagecoach/worker/workertest"
)

// SkipPipe plans (head on stage 0, paths that skip and swap stages, several
// workers per stage) run on real workers: every step completes, replicas
// of a stage stay bit-identical, and the loss goes down.
func TestSkipPipePlanTrains(t *testing.T) {
	sizes := []int{2, 2, 2, 2}
	n := 8
	names := make([]string, n)
	delay := make([][]float64, n)
	fwd := make([]float64, n)
	for i := range names {
		names[i] = fmt.Sprintf("n%d", i)
		delay[i] = make([]float64, n)
		for j := range delay[i] {
			if i != j {
				delay[i][j] = 1e-3
			}
		}
		fwd[i] = 1e-2
	}
	const per, size = 2, 2
	plan, _, err := skippipe.Plan(skippipe.Config{NodeNames: names, StageSizes: sizes, Delay: delay, ForwardS: fwd,
		Memory: 4, MicrobatchesPerOrigin: per, Layers: 4, Samples: size, CollisionAware: true, Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	if !plan.Skips() {
		t.Fatal("the SkipPipe plan skips nothing; the test would not test skipping")
	}
	cfg := trainConfig(4, len(plan.Microbatches), size)
	cfg.Layout = model.HeadFirst
	cfg.Optim.LR = 1e-2
	ref, err := model.NewTrainer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	c := workertest.Start(t, len(plan.Workers), testJob, nil)
	d := &workertest.Driver{Clients: workertest.Dial(t, c.Addrs), Peers: c.Addrs, Plan: plan, Train: ref.Cfg,
		Fence: &pb.Fence{Job: testJob, LeaderRev: 1, Epoch: 1}}
	ctx := context.Background()
	if err := d.Configure(ctx, nil); err != nil {
		t.Fatal(err)
	}
	w := stepWindows(3, 1, len(plan.Microbatches), size, cfg.Model.Ctx, 256)
	var first, last float64
	const steps = 8
	for step := 1; step <= steps; step++ {
		// The same batch every step: the loss must fall.
		res, err := d.Iterate(ctx, int64(step), w)
		if err != nil {
			t.Fatalf("step %d: %v", step, err)
		}
		if len(res.Losses) != len(plan.Microbatches) {
			t.Fatalf("step %d: %d losses for %d microbatches", step, len(res.Losses), len(plan.Microbatches))
		}
		if step == 1 {
			first = res.Loss
		}
		last = res.Loss
	}
	t.Logf("loss %.4f -> %.4f over %d steps", first, last, steps)
	if !(last < first) {
		t.Errorf("loss did not fall: %.4f -> %.4f", first, last)
	}
	checkpointParams(t, c, d, steps)
	sameAcrossReplicas(t, c, d, steps)
}
