package worker_test

import (
	"bytes"
	"context"
	"encoding/json"
	"runtime"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"stagecoach/internal/transport"
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

// Tensors of the next epoch wait in a bounded queue: past its count they
// are refused, a Configure that supersedes them frees the room, and
// epochs beyond the next are refused outright.
func TestNextEpochQueueIsBoundedAndDroppedWhenSuperseded(t *testing.T) {
	c, d := configured(t, func(_ int, cfg *worker.Config) { cfg.NextEpochTensors = 2 })
	ctx := context.Background()
	peer := peerClient(t, c.Addrs[1])
	sendAt := func(what string, epoch int64, code codes.Code) {
		t.Helper()
		h, p := activation(d)
		h.Fence.Epoch = epoch
		wantCode(t, what, transport.Send(ctx, peer, h, p, 0), code)
	}
	sendAt("first next-epoch tensor", 4, codes.OK)
	sendAt("second next-epoch tensor", 4, codes.OK)
	sendAt("third next-epoch tensor (limit 2)", 4, codes.ResourceExhausted)
	sendAt("tensor two epochs ahead", 5, codes.FailedPrecondition)
	// A Configure for epoch 5 supersedes epoch 4: its tensors are
	// dropped, and epoch 6 becomes the next.
	d.Fence = fence(d, func(f *pb.Fence) { f.Epoch = 5 })
	if err := d.Configure(ctx, nil); err != nil {
		t.Fatal(err)
	}
	sendAt("next-epoch tensor after the drop", 6, codes.OK)
	sendAt("second one", 6, codes.OK)
	sendAt("third one (limit 2)", 6, codes.ResourceExhausted)
}

// One peer may hold only PeerStreams tensor streams open at once; others
// are unaffected.
func TestPeerStreamLimit(t *testing.T) {
	c, d := configured(t, func(_ int, cfg *worker.Config) { cfg.PeerStreams = 1 })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	peer := peerClient(t, c.Addrs[1])
	// A stream that sends its header and then stalls, holding its slot.
	hold := func() pb.Peer_SendTensorClient {
		h, _ := activation(d)
		h.TotalBytes = int64(4 * h.Shape[0] * h.Shape[1] * h.Shape[2])
		held, err := peer.SendTensor(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := held.Send(&pb.TensorChunk{Header: h}); err != nil {
			t.Fatal(err)
		}
		return held
	}
	held := hold()
	var err2 error
	for range 100 { // until the server has taken the held stream
		h2, p2 := activation(d)
		if err2 = transport.Send(ctx, peer, h2, p2, 0); status.Code(err2) == codes.ResourceExhausted {
			break
		}
		// A send that reached the server before the held stream's
		// header took the slot, and the held stream was refused
		// instead: hold another.
		if err := held.Send(&pb.TensorChunk{}); err != nil {
			held = hold()
		}
		time.Sleep(10 * time.Millisecond)
	}
	wantCode(t, "second concurrent stream of one peer (limit 1)", err2, codes.ResourceExhausted)
	h3, p3 := activation(d)
	if err := transport.Send(ctx, peerClient(t, c.Addrs[1]), h3, p3, 0); err != nil {
		t.Errorf("another peer's stream: %v", err)
	}
}
