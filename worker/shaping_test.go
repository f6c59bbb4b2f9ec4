package worker_test

import (
	"context"
	"testing"
	"time"

	"stagecoach/model"
	pb "stagecoach/proto"
	"stagecoach/scheduler"
	"stagecoach/worker/workertest"
)

// twoRegions puts the classic plan's node-0 and node-1 in regions 50 ms
// apart, in the simulator's cluster YAML.
const twoRegions = `
name: two-regions
compute:
  layer_forward_s: 0.001
  activation_bytes_per_sample: 1024
  gradient_bytes_per_layer: 1024
nodes:
  - {name: node-0, region: east}
  - {name: node-1, region: west}
links:
  - {a: east, b: west, latency_ms: 50, bandwidth_gib_s: 1}
`

// An emulated 50 ms link makes every hop take at least 50 ms: one GPipe
// iteration over two stages crosses it forward and backward, so it takes
// at least 100 ms. Only a lower bound is asserted.
func TestEmulatedLinkDelaysTheIteration(t *testing.T) {
	cfg := trainConfig(2, 1, 1)
	ref, err := model.NewTrainer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	plan, err := scheduler.Generate("gpipe", scheduler.Spec{Stages: 2, Microbatches: 1, Layers: 2, Samples: 1})
	if err != nil {
		t.Fatal(err)
	}
	c := workertest.Start(t, 2, testJob, nil)
	d := &workertest.Driver{Clients: workertest.Dial(t, c.Addrs), Peers: c.Addrs, Plan: plan, Train: ref.Cfg,
		Fence: &pb.Fence{Job: testJob, LeaderRev: 1, Epoch: 1}}
	ctx := context.Background()
	if err := d.Configure(ctx, []byte(twoRegions)); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	res, err := d.Iterate(ctx, 1, stepWindows(1, 1, 1, 1, cfg.Model.Ctx, 256))
	if err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took < 100*time.Millisecond {
		t.Errorf("iteration over a 50 ms link took %v, want >= 100ms", took)
	}
	// Worker 1's forward cannot start until 50 ms after worker 0's
	// forward ended (absolute times: both workers share this clock).
	at := func(r *pb.RunIterationResponse, action string, end bool) float64 {
		for _, tm := range r.GetTimings() {
			if tm.GetAction() == action {
				if end {
					return r.GetStartedUnixS() + tm.GetEndS()
				}
				return r.GetStartedUnixS() + tm.GetStartS()
			}
		}
		t.Fatalf("no timing for %s", action)
		return 0
	}
	if gap := at(res.Runs[1], "F0@s1", false) - at(res.Runs[0], "F0@s0", true); gap < 0.0499 {
		t.Errorf("F0@s1 started %.4fs after F0@s0 ended, want >= 0.05 (the link's latency)", gap)
	}
}
