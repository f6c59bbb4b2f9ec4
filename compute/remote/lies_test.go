package remote_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"stagecoach/compute"
	"stagecoach/compute/builtin"
	"stagecoach/compute/conformance"
	"stagecoach/compute/remote"
	"stagecoach/compute/serve"
	pb "stagecoach/proto/compute"
)

// liar is the built-in backend with one answer falsified.
type liar struct {
	builtin.Backend
	lie string
}

type liarStage struct {
	compute.Stage
	lie string
}

func (l liar) Name() string { return "liar" }

func (l liar) Load(ctx context.Context, s compute.LoadSpec) (compute.Stage, error) {
	st, err := l.Backend.Load(ctx, s)
	if err != nil {
		return nil, err
	}
	return liarStage{st, l.lie}, nil
}

func (s liarStage) Describe() compute.Description {
	d := s.Stage.Describe()
	if s.lie == "width" {
		d.Width = 0
	}
	return d
}

func reshape(t *compute.Tensor, shape ...int) *compute.Tensor {
	n := 1
	for _, d := range shape {
		n *= d
	}
	return &compute.Tensor{Shape: shape, Data: make([]float32, n)}
}

func (s liarStage) Forward(mb int, x *compute.Tensor) (*compute.Tensor, error) {
	y, err := s.Stage.Forward(mb, x)
	if err != nil {
		return y, err
	}
	switch s.lie {
	case "forward-width":
		return reshape(y, y.Shape[0], y.Shape[1], y.Shape[2]+1), nil
	case "forward-batch":
		return reshape(y, y.Shape[0]+1, y.Shape[1], y.Shape[2]), nil
	case "forward-data":
		y.Data = y.Data[1:] // the data does not fill the shape
	}
	return y, nil
}

func (s liarStage) Loss(mb int, h *compute.Tensor, tg []int32) (float64, *compute.Tensor, error) {
	l, g, err := s.Stage.Loss(mb, h, tg)
	if err == nil && s.lie == "loss" {
		g = reshape(g, g.Shape[0], g.Shape[1]-1, g.Shape[2])
	}
	return l, g, err
}

func (s liarStage) Backward(mb int, g *compute.Tensor) (*compute.Tensor, error) {
	gx, err := s.Stage.Backward(mb, g)
	if err != nil {
		return gx, err
	}
	switch s.lie {
	case "backward":
		return reshape(gx, gx.Shape[0], gx.Shape[1], gx.Shape[2]-1), nil
	case "backward-embed":
		return reshape(g, g.Shape...), nil
	}
	return gx, nil
}

func (s liarStage) Grads() ([]float32, error) {
	g, err := s.Stage.Grads()
	if s.lie == "grads" {
		g = g[1:]
	}
	return g, err
}

func (s liarStage) Contribution(mb int) ([]float32, error) {
	g, err := s.Stage.Contribution(mb)
	if s.lie == "contribution" {
		g = append(g, 0)
	}
	return g, err
}

func (s liarStage) SumSquares() ([]float64, error) {
	ss, err := s.Stage.SumSquares()
	if s.lie == "sumsquares" {
		ss = ss[1:]
	}
	return ss, err
}

func (s liarStage) State() ([]compute.ParamState, error) {
	st, err := s.Stage.State()
	if err != nil {
		return st, err
	}
	st = append([]compute.ParamState(nil), st...)
	switch s.lie {
	case "state-name":
		st[1].Name = "blocks.9.w1"
	case "state-shape":
		st[1].Shape = []int{len(st[1].W)}
	case "state-count":
		st = st[:len(st)-1]
	}
	return st, nil
}

// TestLyingBackend: every answer an operation cannot give fails the
// call with a backend failure naming the backend, and the calls after it.
func TestLyingBackend(t *testing.T) {
	embed := compute.ShardSpec{Lo: 0, Hi: 1, Embed: true}
	headSpec := compute.ShardSpec{Lo: 0, Hi: 1, Head: true}
	tokens := &compute.Tensor{Shape: []int{conformance.B, conformance.T}, Data: make([]float32, conformance.B*conformance.T)}
	targets := make([]int32, conformance.B*conformance.T)
	fwd := func(st compute.Stage) error { _, err := st.Forward(0, hidden()); return err }
	bwd := func(st compute.Stage) error {
		if err := fwd(st); err != nil {
			t.Fatalf("forward before the lie: %v", err)
		}
		_, err := st.Backward(0, hidden())
		return err
	}
	for _, c := range []struct {
		lie  string
		spec compute.ShardSpec
		op   func(compute.Stage) error
	}{
		{"forward-width", blocks, fwd},
		{"forward-batch", blocks, fwd},
		{"forward-data", blocks, fwd},
		{"loss", headSpec, func(st compute.Stage) error { _, _, err := st.Loss(0, hidden(), targets); return err }},
		{"backward", blocks, bwd},
		{"backward-embed", embed, func(st compute.Stage) error {
			if _, err := st.Forward(0, tokens); err != nil {
				t.Fatal(err)
			}
			_, err := st.Backward(0, hidden())
			return err
		}},
		{"grads", blocks, func(st compute.Stage) error { _, err := st.Grads(); return err }},
		{"contribution", blocks, func(st compute.Stage) error {
			if err := st.KeepContributions(true); err != nil {
				t.Fatal(err)
			}
			if err := bwd(st); err != nil {
				t.Fatal(err)
			}
			_, err := st.Contribution(0)
			return err
		}},
		{"sumsquares", blocks, func(st compute.Stage) error { _, err := st.SumSquares(); return err }},
		{"state-name", blocks, func(st compute.Stage) error { _, err := st.State(); return err }},
		{"state-shape", blocks, func(st compute.Stage) error { _, err := st.State(); return err }},
		{"state-count", blocks, func(st compute.Stage) error { _, err := st.State(); return err }},
	} {
		t.Run(c.lie, func(t *testing.T) {
			b := dialServer(t, liar{lie: c.lie}, serve.Options{}, remote.Options{})
			st := load(t, b, c.spec)
			err := c.op(st)
			failed(t, err, `"liar" backend at unix://`)
			if err := st.ZeroGrad(); !errors.Is(err, compute.ErrBackend) {
				t.Fatalf("a call after the lie: %v", err)
			}
		})
	}
	t.Run("width", func(t *testing.T) {
		b := dialServer(t, liar{lie: "width"}, serve.Options{}, remote.Options{})
		_, err := b.Load(context.Background(), compute.LoadSpec{Model: conformance.ModelJSON(1), Shard: blocks})
		failed(t, err, `"liar" backend`, "width 0")
	})
}

// script is a Compute server that answers Hello properly and every other
// call as answer says.
type script struct {
	pb.UnimplementedComputeServer
	answer func(pb.Compute_CallServer) error
}

func (s script) Call(stream pb.Compute_CallServer) error {
	f, err := stream.Recv()
	if err != nil {
		return err
	}
	if f.GetRequest().GetOp() == pb.Op_OP_HELLO {
		return stream.Send(&pb.Frame{Body: &pb.Frame_Response{Response: &pb.Response{Hello: &pb.Hello{Version: pb.Version_VERSION_1, Backend: "script"}}}})
	}
	return s.answer(stream)
}

func response(r *pb.Response) *pb.Frame { return &pb.Frame{Body: &pb.Frame_Response{Response: r}} }
func chunk(b []byte) *pb.Frame          { return &pb.Frame{Body: &pb.Frame_Chunk{Chunk: b}} }

func f32(shape ...int64) *pb.TensorMeta {
	return &pb.TensorMeta{Name: "y", Shape: shape, Dtype: pb.DType_DTYPE_FLOAT32}
}

// TestGarbageStream: answers that break the protocol's framing or limits
// fail the call as a backend failure.
func TestGarbageStream(t *testing.T) {
	sends := func(fs ...*pb.Frame) func(pb.Compute_CallServer) error {
		return func(s pb.Compute_CallServer) error {
			for _, f := range fs {
				if err := s.Send(f); err != nil {
					return err
				}
			}
			return nil
		}
	}
	for _, c := range []struct {
		name   string
		answer func(pb.Compute_CallServer) error
		want   string
	}{
		{"chunk first", sends(chunk([]byte{1, 2, 3, 4})), "not a response"},
		{"no response", sends(), "without a response"},
		{"short tensor", sends(response(&pb.Response{Outputs: []*pb.TensorMeta{f32(4)}}), chunk(make([]byte, 8))), "after 8 of its 16 bytes"},
		{"long tensor", sends(response(&pb.Response{Outputs: []*pb.TensorMeta{f32(1)}}), chunk(make([]byte, 8))), "more tensor bytes"},
		{"huge tensor", sends(response(&pb.Response{Outputs: []*pb.TensorMeta{f32(1 << 40)}})), "over the limit"},
		{"negative shape", sends(response(&pb.Response{Outputs: []*pb.TensorMeta{f32(-1)}})), "negative dimension"},
		{"second response", sends(response(&pb.Response{}), response(&pb.Response{})), "frame where tensor bytes"},
		{"error with outputs", sends(response(&pb.Response{Error: "no", Outputs: []*pb.TensorMeta{f32(1)}})), "error response with 1 outputs"},
		{"status", func(pb.Compute_CallServer) error { return status.Error(codes.Internal, "boom") }, "boom"},
	} {
		t.Run(c.name, func(t *testing.T) {
			addr := socketAddr(t)
			lis, err := serve.Listen(addr)
			if err != nil {
				t.Fatal(err)
			}
			g := grpc.NewServer()
			pb.RegisterComputeServer(g, script{answer: c.answer})
			go func() { _ = g.Serve(lis) }()
			t.Cleanup(g.Stop)
			b, err := remote.Dial(context.Background(), addr, remote.Options{})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = b.Close() })
			_, err = b.Load(context.Background(), compute.LoadSpec{Model: conformance.ModelJSON(1), Shard: blocks})
			failed(t, err, `"script" backend`, c.want)
		})
	}
}

// TestClientLimits: an output over the client's limits is refused before
// it is read.
func TestClientLimits(t *testing.T) {
	b := dialServer(t, builtin.Backend{}, serve.Options{}, remote.Options{Limits: remote.Limits{MaxTensorBytes: 1 << 20}})
	st := load(t, b, blocks)
	const batch = 4096 // [4096, 8, 16] float32: 2 MiB
	x := &compute.Tensor{Shape: []int{batch, conformance.T, conformance.Dim}, Data: make([]float32, batch*conformance.T*conformance.Dim)}
	_, err := st.Forward(0, x)
	failed(t, err, "over the limit of 1048576")
}

// TestRefusalIsNotAFailure: the backend's refusal names the backend and
// leaves it usable.
func TestRefusalIsNotAFailure(t *testing.T) {
	b := dialServer(t, builtin.Backend{}, serve.Options{}, remote.Options{})
	st := load(t, b, blocks)
	_, err := st.Forward(0, reshape(hidden(), 1, 2, 3))
	if err == nil || errors.Is(err, compute.ErrBackend) {
		t.Fatalf("a wrong shape: %v, want a refusal", err)
	}
	failedName := `"go" backend at unix://`
	if !strings.Contains(err.Error(), failedName) || !strings.Contains(err.Error(), "Forward") {
		t.Fatalf("refusal %q does not name the backend and the operation", err)
	}
	if _, err := st.Forward(0, hidden()); err != nil {
		t.Fatalf("after a refusal: %v", err)
	}

	// A server refuses an input over its limits before reading it; the
	// client, still sending, gets the refusal.
	small := dialServer(t, builtin.Backend{}, serve.Options{Limits: serve.Limits{MaxTensorBytes: 1 << 20}}, remote.Options{})
	st = load(t, small, blocks)
	const batch = 8192 // [8192, 8, 16] float32: 4 MiB
	x := &compute.Tensor{Shape: []int{batch, conformance.T, conformance.Dim}, Data: make([]float32, batch*conformance.T*conformance.Dim)}
	_, err = st.Forward(1, x)
	if err == nil || errors.Is(err, compute.ErrBackend) || !strings.Contains(err.Error(), "over the limit of 1048576") {
		t.Fatalf("an input over the server's limit: %v, want a refusal naming the limit", err)
	}
	if _, err := st.Forward(1, hidden()); err != nil {
		t.Fatalf("after a refusal: %v", err)
	}
}
