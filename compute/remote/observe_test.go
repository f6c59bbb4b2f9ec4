package remote_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"

	"stagecoach/compute"
	"stagecoach/compute/builtin"
	"stagecoach/compute/remote"
	"stagecoach/compute/serve"
	pb "stagecoach/proto/compute"
)

// observed is one call Options.Observe was told of.
type observed struct {
	op            string
	call, compute time.Duration
}

// recorder collects what Options.Observe is told.
type recorder struct {
	mu    sync.Mutex
	calls []observed
}

func (r *recorder) observe(op string, call, compute time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, observed{op, call, compute})
}

func (r *recorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.calls)
}

func (r *recorder) last(t *testing.T) observed {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.calls) == 0 {
		t.Fatal("Observe was not called")
	}
	return r.calls[len(r.calls)-1]
}

// slowBackend is the built-in backend whose Forward takes at least hold
// longer, inside the server's compute.
type slowBackend struct {
	builtin.Backend
	hold time.Duration
}

type slowStage struct {
	compute.Stage
	hold time.Duration
}

func (b slowBackend) Load(ctx context.Context, s compute.LoadSpec) (compute.Stage, error) {
	st, err := b.Backend.Load(ctx, s)
	if err != nil {
		return nil, err
	}
	return slowStage{st, b.hold}, nil
}

func (s slowStage) Forward(mb int, x *compute.Tensor) (*compute.Tensor, error) {
	time.Sleep(s.hold)
	return s.Stage.Forward(mb, x)
}

// TestObserveSplitsComputeFromTheCall: the backend's reported compute
// time covers what the stage spent (a Forward held 50 ms reports at
// least that) and never exceeds the call the client timed.
func TestObserveSplitsComputeFromTheCall(t *testing.T) {
	const hold = 50 * time.Millisecond
	var rec recorder
	b := dialServer(t, slowBackend{hold: hold}, serve.Options{}, remote.Options{Observe: rec.observe})
	st := load(t, b, blocks)
	if _, err := st.Forward(0, hidden()); err != nil {
		t.Fatal(err)
	}
	fwd := rec.last(t)
	if fwd.op != "Forward" || fwd.compute < hold || fwd.call < fwd.compute {
		t.Fatalf("Forward observed as %+v; want op Forward, compute at least %v, call at least compute", fwd, hold)
	}
	if _, err := st.Backward(0, hidden()); err != nil {
		t.Fatal(err)
	}
	bwd := rec.last(t)
	if bwd.op != "Backward" || bwd.compute <= 0 || bwd.call < bwd.compute {
		t.Fatalf("Backward observed as %+v; want a compute time within the call", bwd)
	}
	// A refusal is not a call that succeeded: nothing is observed.
	n := rec.count()
	if _, err := st.Forward(1, reshape(hidden(), 1, 2, 3)); err == nil {
		t.Fatal("a wrong shape was not refused")
	}
	if rec.count() != n {
		t.Fatalf("a refused call was observed: %+v", rec.last(t))
	}
}

// TestObserveDropsImpossibleComputeTimes: a backend that reports a
// negative compute time, or one longer than the call, is not believed
// (the observation says 0), and the call itself succeeds: the field is
// a measurement, not part of the result.
func TestObserveDropsImpossibleComputeTimes(t *testing.T) {
	for _, c := range []struct {
		name  string
		nanos int64
	}{{"negative", -5}, {"longer than the call", int64(time.Hour)}} {
		t.Run(c.name, func(t *testing.T) {
			srv, err := serve.New(builtin.Backend{}, serve.Options{})
			if err != nil {
				t.Fatal(err)
			}
			addr := socketAddr(t)
			lis, err := serve.Listen(addr)
			if err != nil {
				t.Fatal(err)
			}
			g := grpc.NewServer(grpc.StreamInterceptor(func(s any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
				return h(s, forgeCompute{ss, c.nanos})
			}))
			pb.RegisterComputeServer(g, srv)
			go func() { _ = g.Serve(lis) }()
			t.Cleanup(g.Stop)
			var rec recorder
			b, err := remote.Dial(context.Background(), addr, remote.Options{Observe: rec.observe})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = b.Close() })
			st := load(t, b, blocks)
			if _, err := st.Forward(0, hidden()); err != nil {
				t.Fatalf("Forward with a forged compute time: %v", err)
			}
			if o := rec.last(t); o.op != "Forward" || o.compute != 0 || o.call <= 0 {
				t.Fatalf("observed %+v; want Forward with compute 0 (not believed)", o)
			}
		})
	}
}

// forgeCompute rewrites the compute time of every response it sends.
type forgeCompute struct {
	grpc.ServerStream
	nanos int64
}

func (f forgeCompute) SendMsg(m any) error {
	if fr, ok := m.(*pb.Frame); ok && fr.GetResponse() != nil {
		fr.GetResponse().ComputeNanos = f.nanos
	}
	return f.ServerStream.SendMsg(m)
}
