package worker_test

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"stagecoach/internal/metrics"
	"stagecoach/internal/metrics/metricstest"
	"stagecoach/internal/transport"
	pb "stagecoach/proto"
	"stagecoach/worker"
)

// TestWorkerMetricsAfterRealWork runs a real iteration on two workers over
// loopback gRPC, sends worker 1 tensors it must refuse, and scrapes
// worker 1's /metrics over HTTP.
func TestWorkerMetricsAfterRealWork(t *testing.T) {
	var srv *metrics.Server
	c, d := configured(t, func(i int, cfg *worker.Config) { cfg.Transport.MaxTensorBytes = 64 << 10 })
	for i, s := range c.Servers {
		reg := metrics.NewRegistry()
		m := metrics.NewWorker(reg)
		s.SetMetrics(m)
		if i == 1 {
			var err error
			if srv, err = metrics.Serve("127.0.0.1:0", reg, nil); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { srv.Close() })
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := d.Iterate(ctx, 1, stepWindows(5, 1, 2, 2, d.Train.Model.Ctx, 256)); err != nil {
		t.Fatal(err)
	}

	peer := peerClient(t, c.Addrs[1])
	send := func(what string, code codes.Code, edit func(h *pb.TensorHeader, p []byte) []byte) {
		t.Helper()
		h, p := activation(d)
		h.Iteration = 2
		p = edit(h, p)
		wantCode(t, what, transport.Send(ctx, peer, h, p, 0), code)
	}
	send("older epoch", codes.FailedPrecondition, func(h *pb.TensorHeader, p []byte) []byte { h.Fence.Epoch--; return p })
	send("deposed leader", codes.FailedPrecondition, func(h *pb.TensorHeader, p []byte) []byte { h.Fence.LeaderRev--; return p })
	send("other job", codes.PermissionDenied, func(h *pb.TensorHeader, p []byte) []byte { h.Fence.Job = "other"; return p })
	send("bad shape", codes.InvalidArgument, func(h *pb.TensorHeader, p []byte) []byte { return p[:len(p)-4] })
	send("wrong sender", codes.InvalidArgument, func(h *pb.TensorHeader, p []byte) []byte { h.From = 1; return p })
	send("oversize", codes.ResourceExhausted, func(h *pb.TensorHeader, p []byte) []byte {
		p = append(p, make([]byte, 64<<10)...)
		h.Shape[0] = int32(len(p) / 4 / int(h.Shape[1]*h.Shape[2]))
		return p
	})

	s := metricstest.Scrape(t, "http://"+srv.Addr()+"/metrics")
	// GPipe over 2 stages, 2 microbatches: worker 1 holds the last stage
	// and the head.
	for _, op := range []string{"Forward", "Loss", "Backward"} {
		if n, _ := s.Get("stagecoach_worker_action_duration_seconds_count", "op", op); n != 2 {
			t.Errorf("%s actions executed: %v, want 2", op, n)
		}
	}
	if sum, _ := s.Get("stagecoach_worker_action_duration_seconds_sum", "op", "Forward"); !(sum > 0 && sum < 60) {
		t.Errorf("Forward time %v s, want a positive time under a minute", sum)
	}
	// Two activations in (one per microbatch), two gradients out.
	D, T := d.Train.Model.Dim, d.Train.Model.Ctx
	tensor := float64(4 * 2 * T * D)
	if n, _ := s.Get("stagecoach_worker_tensors_received_total"); n != 2 {
		t.Errorf("tensors received: %v, want 2", n)
	}
	if b, _ := s.Get("stagecoach_worker_tensor_received_bytes_total"); b != 2*tensor {
		t.Errorf("bytes received: %v, want %v", b, 2*tensor)
	}
	if b, _ := s.Get("stagecoach_worker_tensor_sent_bytes_total"); b != 2*tensor {
		t.Errorf("bytes sent: %v, want %v", b, 2*tensor)
	}
	for reason, want := range map[string]float64{
		metrics.RejectStaleEpoch: 1, metrics.RejectStaleLeader: 1, metrics.RejectWrongJob: 1,
		metrics.RejectBadShape: 1, metrics.RejectBadInput: 1, metrics.RejectOversize: 1, metrics.RejectNoFence: 0,
	} {
		if n, ok := s.Get("stagecoach_worker_tensors_rejected_total", "reason", reason); !ok || n != want {
			t.Errorf("tensors rejected for %s: %v (present %v), want %v", reason, n, ok, want)
		}
	}
	// Configure ran before the metrics were set.
	for _, m := range []string{"RunIteration", "Step"} {
		if n, _ := s.Get("stagecoach_worker_rpc_duration_seconds_count", "method", m, "code", "OK"); n != 1 {
			t.Errorf("%s RPCs served: %v, want 1", m, n)
		}
	}
}
