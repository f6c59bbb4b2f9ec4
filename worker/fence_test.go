package worker_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"stagecoach/internal/transport"
	"stagecoach/model"
	pb "stagecoach/proto"
	"stagecoach/scheduler"
	"stagecoach/worker"
	"stagecoach/worker/workertest"
)

// configured starts a 2-stage GPipe job (2 microbatches of 2 samples) and
// configures it, without running anything.
func configured(t *testing.T, tune func(int, *worker.Config)) (*workertest.Cluster, *workertest.Driver) {
	t.Helper()
	cfg := trainConfig(2, 2, 2)
	ref, err := model.NewTrainer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	plan, err := scheduler.Generate("gpipe", scheduler.Spec{Stages: 2, Microbatches: 2, Layers: 2, Samples: 2})
	if err != nil {
		t.Fatal(err)
	}
	c := workertest.Start(t, 2, testJob, tune)
	d := &workertest.Driver{Clients: workertest.Dial(t, c.Addrs), Peers: c.Addrs, Plan: plan, Train: ref.Cfg,
		Fence: &pb.Fence{Job: testJob, LeaderRev: 7, Epoch: 3}}
	if err := d.Configure(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	return c, d
}

func fence(d *workertest.Driver, edit func(f *pb.Fence)) *pb.Fence {
	f := proto.Clone(d.Fence).(*pb.Fence)
	edit(f)
	return f
}

func wantCode(t *testing.T, what string, err error, code codes.Code) {
	t.Helper()
	if status.Code(err) != code {
		t.Errorf("%s: got %v, want %v", what, err, code)
	}
}

func TestFencingOfControlRPCs(t *testing.T) {
	_, d := configured(t, nil)
	ctx := context.Background()
	w := d.Clients[0]
	_, err := w.RunIteration(ctx, &pb.RunIterationRequest{Fence: fence(d, func(f *pb.Fence) { f.Job = "other" }), Iteration: 1})
	wantCode(t, "wrong job", err, codes.PermissionDenied)
	_, err = w.RunIteration(ctx, &pb.RunIterationRequest{Iteration: 1})
	wantCode(t, "no fence", err, codes.InvalidArgument)
	_, err = w.Step(ctx, &pb.StepRequest{Fence: fence(d, func(f *pb.Fence) { f.LeaderRev = 6 }), Iteration: 1, ClipScale: 1, Lr: 1e-3})
	wantCode(t, "deposed leader", err, codes.FailedPrecondition)
	_, err = w.RunIteration(ctx, &pb.RunIterationRequest{Fence: fence(d, func(f *pb.Fence) { f.Epoch = 2 }), Iteration: 1})
	wantCode(t, "older epoch", err, codes.FailedPrecondition)
	_, err = w.Configure(ctx, &pb.ConfigureRequest{Fence: fence(d, func(f *pb.Fence) { f.Epoch = 2 })})
	wantCode(t, "configure for an older epoch", err, codes.FailedPrecondition)

	// A new leader (higher revision) takes over; the old one is fenced
	// from then on, even for a harmless-looking checkpoint.
	if _, err := w.SaveCheckpoint(ctx, &pb.CheckpointRequest{Fence: fence(d, func(f *pb.Fence) { f.LeaderRev = 9 })}); err != nil {
		t.Fatal(err)
	}
	_, err = w.SaveCheckpoint(ctx, &pb.CheckpointRequest{Fence: d.Fence})
	wantCode(t, "old leader after a new one spoke", err, codes.FailedPrecondition)
	st, err := w.Status(ctx, &pb.StatusRequest{})
	if err != nil || st.GetEpoch() != 3 || st.GetName() != "w0" || len(st.GetStages()) != 1 {
		t.Errorf("status: %v, %v", st, err)
	}
}

func TestStepIsNeverAppliedTwice(t *testing.T) {
	c, d := configured(t, nil)
	ctx := context.Background()
	_, err := d.Clients[0].Step(ctx, &pb.StepRequest{Fence: d.Fence, Iteration: 1, ClipScale: 1, Lr: 1e-3})
	wantCode(t, "step before its iteration ran", err, codes.FailedPrecondition)
	w := stepWindows(5, 1, 2, 2, d.Train.Model.Ctx, 256)
	if _, err := d.Iterate(ctx, 1, w); err != nil {
		t.Fatal(err)
	}
	before := checkpointParams(t, c, d, 1)
	for i, cl := range d.Clients {
		_, err := cl.Step(ctx, &pb.StepRequest{Fence: d.Fence, Iteration: 1, ClipScale: 1, Lr: 1e-3})
		wantCode(t, "repeated step", err, codes.AlreadyExists)
		_, err = cl.RunIteration(ctx, &pb.RunIterationRequest{Fence: d.Fence, Iteration: 1})
		wantCode(t, "rerun of a stepped iteration", err, codes.AlreadyExists)
		_, err = cl.RunIteration(ctx, &pb.RunIterationRequest{Fence: d.Fence, Iteration: 3})
		wantCode(t, "iteration skipping one", err, codes.FailedPrecondition)
		if st, _ := cl.Status(ctx, &pb.StatusRequest{}); st.GetAppliedStep() != 1 {
			t.Errorf("worker %d: applied step %d, want 1", i, st.GetAppliedStep())
		}
	}
	after := checkpointParams(t, c, d, 1)
	for name, b := range before {
		for i := range b {
			if b[i] != after[name][i] {
				t.Fatalf("%s changed after refused steps", name)
			}
		}
	}
}

// peerClient dials a worker's Peer service the way another worker does.
func peerClient(t *testing.T, addr string) pb.PeerClient {
	t.Helper()
	conn, err := grpc.NewClient(addr, append(transport.Options{}.DialOptions(), grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return pb.NewPeerClient(conn)
}

// activation is a well-formed activation of microbatch 0 from worker 0 to
// stage 1 on worker 1 of the configured job.
func activation(d *workertest.Driver) (*pb.TensorHeader, []byte) {
	D, T := d.Train.Model.Dim, d.Train.Model.Ctx
	h := &pb.TensorHeader{Fence: proto.Clone(d.Fence).(*pb.Fence), Iteration: 1, Kind: pb.TensorKind_TENSOR_KIND_ACTIVATION,
		Microbatch: 0, Stage: 1, From: 0, To: 1, Shape: []int32{2, int32(T), int32(D)}}
	return h, transport.EncodeFloat32s(make([]float32, 2*T*D))
}

func TestTensorFencing(t *testing.T) {
	c, d := configured(t, nil)
	ctx := context.Background()
	peer := peerClient(t, c.Addrs[1])
	h, p := activation(d)
	h.Fence.Epoch = 2
	wantCode(t, "tensor from an older epoch", transport.Send(ctx, peer, h, p, 0), codes.FailedPrecondition)
	h, p = activation(d)
	h.Fence.Job = "other"
	wantCode(t, "tensor of another job", transport.Send(ctx, peer, h, p, 0), codes.PermissionDenied)
	h, p = activation(d)
	h.Fence.LeaderRev = 1
	wantCode(t, "tensor under a deposed leader", transport.Send(ctx, peer, h, p, 0), codes.FailedPrecondition)
	h, p = activation(d)
	h.Fence = nil
	wantCode(t, "tensor without fence", transport.Send(ctx, peer, h, p, 0), codes.InvalidArgument)
}

// A bad tensor is refused to its sender and never fails the receiver's
// iteration by itself: the real tensors that follow complete it.
func TestBadTensorDoesNotFailTheIteration(t *testing.T) {
	cases := map[string]func(h *pb.TensorHeader, p []byte) []byte{
		"wrong shape": func(h *pb.TensorHeader, p []byte) []byte {
			h.Shape = []int32{2, h.Shape[1], h.Shape[2] + 1}
			return append(p, make([]byte, 4*2*int(h.Shape[1]))...)
		},
		"wrong sender": func(h *pb.TensorHeader, p []byte) []byte { h.From = 1; return p },
		"wrong stage":  func(h *pb.TensorHeader, p []byte) []byte { h.Stage = 0; return p },
		"size mismatch": func(h *pb.TensorHeader, p []byte) []byte {
			return p[:len(p)-4]
		},
		"empty":         func(h *pb.TensorHeader, p []byte) []byte { h.Shape = []int32{0, h.Shape[1], h.Shape[2]}; return nil },
		"far iteration": func(h *pb.TensorHeader, p []byte) []byte { h.Iteration = 3; return p },
	}
	for name, edit := range cases {
		t.Run(name, func(t *testing.T) {
			c, d := configured(t, nil)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			// Worker 1 waits for the activations of microbatches 0 and
			// 1; a bad one arrives first.
			done := make(chan error, 1)
			go func() {
				w := stepWindows(5, 1, 2, 2, d.Train.Model.Ctx, 256)
				data := []*pb.MicrobatchData{
					{Microbatch: 0, Batch: 2, Ctx: int32(d.Train.Model.Ctx), Tokens: w[0]},
					{Microbatch: 1, Batch: 2, Ctx: int32(d.Train.Model.Ctx), Tokens: w[1]},
				}
				_, err := d.Clients[1].RunIteration(ctx, &pb.RunIterationRequest{Fence: d.Fence, Iteration: 1, Data: data})
				done <- err
			}()
			peer := peerClient(t, c.Addrs[1])
			h, p := activation(d)
			p = edit(h, p)
			wantCode(t, "sender of a bad tensor", transport.Send(ctx, peer, h, p, 0), codes.InvalidArgument)
			for mb := range int32(2) {
				h, p := activation(d)
				h.Microbatch = mb
				if err := transport.Send(ctx, peer, h, p, 0); err != nil {
					t.Fatalf("real activation of microbatch %d: %v", mb, err)
				}
			}
			if err := <-done; err != nil {
				t.Fatalf("receiver's iteration failed: %v", err)
			}
			if _, err := d.Clients[1].Step(ctx, &pb.StepRequest{Fence: d.Fence, Iteration: 1, ClipScale: 1, Lr: 1e-3}); err != nil {
				t.Fatalf("step after the iteration: %v", err)
			}
		})
	}
}

func TestOversizeTensorRejected(t *testing.T) {
	c, d := configured(t, func(i int, c *worker.Config) { c.Transport.MaxTensorBytes = 1 << 10 })
	h, p := activation(d)
	p = append(p, make([]byte, 1<<10)...)
	h.Shape[0] = int32(len(p) / 4 / int(h.Shape[1]*h.Shape[2]))
	err := transport.Send(context.Background(), peerClient(t, c.Addrs[1]), h, p, 0)
	wantCode(t, "oversize tensor", err, codes.ResourceExhausted)
	if err != nil && !strings.Contains(err.Error(), "too large") {
		t.Errorf("oversize error does not say so: %v", err)
	}
}
