package serve_test

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"stagecoach/compute/builtin"
	"stagecoach/compute/conformance"
	"stagecoach/compute/serve"
	pb "stagecoach/proto/compute"
)

// rawClient serves the built-in backend with opts on a Unix socket and
// returns a plain gRPC client of it, which can send anything.
func rawClient(t *testing.T, opts serve.Options) pb.ComputeClient {
	t.Helper()
	dir, err := os.MkdirTemp("", "st")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	addr := "unix://" + filepath.Join(dir, "s.sock")
	srv, err := serve.Start(builtin.Backend{}, opts, addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Stop)
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return pb.NewComputeClient(conn)
}

// exchange sends frames, closes, and returns the response and the bytes
// of the chunks that follow it.
func exchange(t *testing.T, c pb.ComputeClient, frames ...*pb.Frame) (*pb.Response, []byte) {
	t.Helper()
	s, err := c.Call(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range frames {
		if err := s.Send(f); err != nil {
			if errors.Is(err, io.EOF) {
				break // the server answered early
			}
			t.Fatal(err)
		}
	}
	_ = s.CloseSend()
	f, err := s.Recv()
	if err != nil {
		t.Fatal(err)
	}
	resp := f.GetResponse()
	if resp == nil {
		t.Fatalf("first frame %T, want a response", f.GetBody())
	}
	var data []byte
	for {
		f, err := s.Recv()
		if errors.Is(err, io.EOF) {
			return resp, data
		}
		if err != nil {
			t.Fatal(err)
		}
		if len(f.GetChunk()) > 1<<20 {
			t.Fatalf("a chunk of %d bytes", len(f.GetChunk()))
		}
		data = append(data, f.GetChunk()...)
	}
}

func req(r *pb.Request) *pb.Frame { return &pb.Frame{Body: &pb.Frame_Request{Request: r}} }
func chunk(n int) *pb.Frame       { return &pb.Frame{Body: &pb.Frame_Chunk{Chunk: make([]byte, n)}} }

func hidden(shape ...int64) *pb.TensorMeta {
	return &pb.TensorMeta{Name: "x", Shape: shape, Dtype: pb.DType_DTYPE_FLOAT32}
}

// load loads the conformance model's block 0 and returns its handle.
func load(t *testing.T, c pb.ComputeClient) int64 {
	t.Helper()
	resp, _ := exchange(t, c, req(&pb.Request{Version: pb.Version_VERSION_1, Op: pb.Op_OP_LOAD, Load: &pb.LoadArgs{ModelJson: conformance.ModelJSON(1), Lo: 0, Hi: 1}}))
	if resp.Error != "" || resp.Stage == 0 {
		t.Fatalf("load: %q (stage %d)", resp.Error, resp.Stage)
	}
	return resp.Stage
}

// TestRefusals: requests that break the protocol or the limits are
// answered with an error naming what is wrong, and the server goes on.
func TestRefusals(t *testing.T) {
	c := rawClient(t, serve.Options{Limits: serve.Limits{MaxTensorBytes: 4096, MaxTensors: 4}})
	h := load(t, c)
	v1 := pb.Version_VERSION_1
	fwd := func(metas ...*pb.TensorMeta) *pb.Frame {
		return req(&pb.Request{Version: v1, Op: pb.Op_OP_FORWARD, Stage: h, Inputs: metas})
	}
	for _, tc := range []struct {
		name   string
		frames []*pb.Frame
		want   string
	}{
		{"no version", []*pb.Frame{req(&pb.Request{Op: pb.Op_OP_HELLO})}, "protocol version VERSION_UNSPECIFIED; this server speaks VERSION_1"},
		{"other version", []*pb.Frame{req(&pb.Request{Version: 2, Op: pb.Op_OP_HELLO})}, "protocol version 2"},
		{"chunk first", []*pb.Frame{chunk(4)}, "must be a request"},
		{"tensor over the limit", []*pb.Frame{fwd(hidden(2, 8, 16, 5))}, "5120 bytes, over the limit of 4096"},
		{"too many tensors", []*pb.Frame{req(&pb.Request{Version: v1, Op: pb.Op_OP_SET_STATE, Stage: h, Inputs: []*pb.TensorMeta{hidden(1), hidden(1), hidden(1), hidden(1), hidden(1)}})}, "5 tensors exceed the limit of 4"},
		{"huge shape", []*pb.Frame{fwd(hidden(1<<40, 1<<40))}, "too large"},
		{"negative shape", []*pb.Frame{fwd(hidden(2, -8, 16))}, "negative dimension"},
		{"rank", []*pb.Frame{fwd(hidden(1, 1, 1, 1, 1, 1, 1, 1, 1))}, "rank 9"},
		{"two inputs", []*pb.Frame{fwd(hidden(1), hidden(1))}, "Forward: 2 inputs, the operation takes 1"},
		{"int32 hidden", []*pb.Frame{fwd(&pb.TensorMeta{Shape: []int64{1}, Dtype: pb.DType_DTYPE_INT32})}, "is DTYPE_INT32, want DTYPE_FLOAT32"},
		{"missing bytes", []*pb.Frame{fwd(hidden(2, 8, 16)), chunk(1000)}, "after 1000 of its 1024 bytes"},
		{"extra bytes", []*pb.Frame{fwd(hidden(2, 8, 16)), chunk(1028)}, "more tensor bytes"},
		{"chunk over 1 MiB", []*pb.Frame{fwd(hidden(2, 8, 16)), chunk(1<<20 + 1)}, "over the limit of 1048576"},
		{"request after inputs", []*pb.Frame{fwd(hidden(1)), chunk(4), fwd(hidden(1))}, "frame where tensor bytes"},
		{"no stage", []*pb.Frame{req(&pb.Request{Version: v1, Op: pb.Op_OP_ZERO_GRAD, Stage: 77})}, "no stage 77 is loaded"},
		{"wrong width", []*pb.Frame{fwd(hidden(2, 8, 8)), chunk(512)}, "Forward: model: hidden shape [2 8 8]"},
		{"no load args", []*pb.Frame{req(&pb.Request{Version: v1, Op: pb.Op_OP_LOAD})}, "no load arguments"},
		{"bad model", []*pb.Frame{req(&pb.Request{Version: v1, Op: pb.Op_OP_LOAD, Load: &pb.LoadArgs{ModelJson: []byte(`{"dim":-1}`)}})}, "Load: builtin"},
		{"flat gradient shape", []*pb.Frame{req(&pb.Request{Version: v1, Op: pb.Op_OP_SET_GRADS, Stage: h, Inputs: []*pb.TensorMeta{hidden(1, 1)}}), chunk(4)}, "want a flat [n]"},
		{"state names", []*pb.Frame{req(&pb.Request{Version: v1, Op: pb.Op_OP_SET_STATE, Stage: h, Inputs: []*pb.TensorMeta{hidden(16)}}), chunk(64)}, `state tensor 0 is "x", want "blocks.0.norm1"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, data := exchange(t, c, tc.frames...)
			if !strings.Contains(resp.Error, tc.want) {
				t.Fatalf("error %q, want it to say %q", resp.Error, tc.want)
			}
			if len(resp.Outputs) != 0 || len(data) != 0 {
				t.Fatalf("a refusal with %d outputs and %d bytes", len(resp.Outputs), len(data))
			}
			// The server goes on.
			resp, _ = exchange(t, c, req(&pb.Request{Version: v1, Op: pb.Op_OP_HELLO}))
			if resp.GetHello().GetBackend() != builtin.Name {
				t.Fatalf("Hello after the refusal: %v", resp)
			}
		})
	}
}

// TestChunking: outputs come in chunks of at most 1 MiB (checked by
// exchange), with exactly the declared bytes, and inputs may be split
// anywhere, even inside a float.
func TestChunking(t *testing.T) {
	c := rawClient(t, serve.Options{})
	h := load(t, c)
	const b = 1100 // [1100, 8, 16] float32: 563200 bytes
	in := make([]byte, b*8*16*4)
	frames := []*pb.Frame{req(&pb.Request{Version: pb.Version_VERSION_1, Op: pb.Op_OP_FORWARD, Stage: h, Inputs: []*pb.TensorMeta{hidden(b, 8, 16)}})}
	for off := 0; off < len(in); off += 333 {
		frames = append(frames, &pb.Frame{Body: &pb.Frame_Chunk{Chunk: in[off:min(off+333, len(in))]}})
	}
	resp, data := exchange(t, c, frames...)
	if resp.Error != "" {
		t.Fatal(resp.Error)
	}
	if len(resp.Outputs) != 1 || len(data) != len(in) {
		t.Fatalf("%d outputs, %d bytes; want 1 of %d", len(resp.Outputs), len(data), len(in))
	}
	// State: many tensors, packed into chunks.
	resp, data = exchange(t, c, req(&pb.Request{Version: pb.Version_VERSION_1, Op: pb.Op_OP_STATE, Stage: h}))
	if resp.Error != "" {
		t.Fatal(resp.Error)
	}
	var n int64
	for _, m := range resp.Outputs {
		e := int64(4)
		for _, d := range m.Shape {
			e *= d
		}
		n += e
	}
	if len(resp.Outputs) != 18 || int64(len(data)) != n {
		t.Fatalf("State: %d tensors of %d bytes, got %d bytes; want 18 (6 parameters with 2 moments)", len(resp.Outputs), n, len(data))
	}
}

// TestListen refuses a TCP address that is not loopback.
func TestListen(t *testing.T) {
	if _, err := serve.Listen("0.0.0.0:0"); err == nil || !strings.Contains(err.Error(), "not loopback") {
		t.Fatalf("Listen 0.0.0.0:0: %v", err)
	}
	if _, err := serve.Listen("unix://relative"); err == nil {
		t.Fatal("Listen unix://relative accepted")
	}
	lis, err := serve.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	lis.Close()
}
