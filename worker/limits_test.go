package worker_test

import (
	"bytes"
	"context"
	"encoding/json"
	"runtime"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"

	pb "stagecoach/proto"
	"stagecoach/scheduler"
	"stagecoach/worker"
	"stagecoach/worker/workertest"
)

// A Configure whose model asks for dim 65536 (51.5 GB of parameters) is
// refused over real gRPC with an error naming the limit, before the
// worker allocates anything for it; a model within a raised limit is
// built; RunIteration data whose batch blows the activation limit is
// refused too.
func TestConfigureRefusesModelsPastTheLimits(t *testing.T) {
	_, d := configured(t, nil)
	ctx := context.Background()
	var pj bytes.Buffer
	if err := scheduler.Encode(&pj, d.Plan); err != nil {
		t.Fatal(err)
	}
	huge := d.Train
	huge.Model.Dim = 65536
	mj, _ := json.Marshal(huge)
	req := &pb.ConfigureRequest{Fence: fence(d, func(f *pb.Fence) { f.Epoch = 4 }), PlanJson: pj.Bytes(), Worker: 0, Peers: d.Peers, ModelJson: mj}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	_, err := d.Clients[0].Configure(ctx, req)
	runtime.ReadMemStats(&after)
	wantCode(t, "Configure with dim 65536", err, codes.InvalidArgument)
	if err == nil || !strings.Contains(err.Error(), "exceed the limit of 268435456 parameters") || !strings.Contains(err.Error(), "dim 65536") {
		t.Errorf("refusal does not name the limit and the dimension: %v", err)
	}
	// This process runs the client and both workers: all of it together
	// allocated next to nothing.
	if grew := after.TotalAlloc - before.TotalAlloc; grew > 16<<20 {
		t.Errorf("refusing the model allocated %d bytes", grew)
	}
	if st, _ := d.Clients[0].Status(ctx, &pb.StatusRequest{}); st.GetEpoch() != 3 {
		t.Errorf("refused Configure changed the epoch to %d", st.GetEpoch())
	}

	// The iteration's data is checked too: a huge batch in a small
	// message (refused by the plan's sample count here, by the
	// activation limit when the plan leaves it open).
	_, err = d.Clients[0].RunIteration(ctx, &pb.RunIterationRequest{Fence: d.Fence, Iteration: 1,
		Data: []*pb.MicrobatchData{{Microbatch: 0, Batch: 1 << 30, Ctx: int32(d.Train.Model.Ctx), Tokens: []int32{1}}}})
	wantCode(t, "RunIteration with a batch of 2^30", err, codes.InvalidArgument)
	if err == nil || !strings.Contains(err.Error(), "batch 1073741824") {
		t.Errorf("refusal does not name the batch: %v", err)
	}

	// A worker with a lower limit refuses the test's own small model.
	low := workertest.Start(t, 1, testJob, func(_ int, cfg *worker.Config) { cfg.Model.MaxParams = 1000 })
	mj, _ = json.Marshal(d.Train)
	one, err := scheduler.Generate("gpipe", scheduler.Spec{Stages: 1, Microbatches: 2, Layers: 2, Samples: 2})
	if err != nil {
		t.Fatal(err)
	}
	pj.Reset()
	if err := scheduler.Encode(&pj, one); err != nil {
		t.Fatal(err)
	}
	_, err = workertest.Dial(t, low.Addrs)[0].Configure(ctx, &pb.ConfigureRequest{Fence: d.Fence, PlanJson: pj.Bytes(), Peers: low.Addrs, ModelJson: mj})
	wantCode(t, "Configure past a lowered limit", err, codes.InvalidArgument)
	if err == nil || !strings.Contains(err.Error(), "limit of 1000 parameters") {
		t.Errorf("refusal does not name the lowered limit: %v", err)
	}
}
