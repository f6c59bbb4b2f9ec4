package transport

import (
	"bytes"
	"context"
	"errors"
	"math"
	"net"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "stagecoach/proto"
)

// sink is a Peer server that keeps what it receives.
type sink struct {
	pb.UnimplementedPeerServer
	max     int64
	discard bool // benchmarks: do not keep payloads
	mu      sync.Mutex
	got     [][]byte
	at      []time.Time
}

func (s *sink) SendTensor(stream pb.Peer_SendTensorServer) error {
	_, p, err := Receive(stream, s.max, nil)
	if err != nil {
		if errors.Is(err, ErrTooLarge) {
			return status.Error(codes.ResourceExhausted, err.Error())
		}
		return status.Error(codes.InvalidArgument, err.Error())
	}
	var data []byte
	s.mu.Lock()
	if !s.discard {
		data = p.Bytes()
	}
	p.Release()
	s.got = append(s.got, data)
	s.at = append(s.at, time.Now())
	s.mu.Unlock()
	return stream.SendAndClose(&pb.TensorAck{})
}

// startSink serves a sink on loopback; extra adds server options (such as
// credentials).
func startSink(t testing.TB, max int64, extra ...grpc.ServerOption) (*sink, string) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &sink{max: max}
	srv := grpc.NewServer(append(Options{}.ServerOptions(), extra...)...)
	pb.RegisterPeerServer(srv, s)
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	return s, lis.Addr().String()
}

func pattern(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + i/251)
	}
	return b
}

func TestOutboxDeliversInOrderAcrossChunks(t *testing.T) {
	s, addr := startSink(t, 64<<20)
	o, err := NewOutbox(Options{ChunkBytes: 1000}, []string{"", addr}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	ctx := context.Background()
	sizes := []int{0, 1, 999, 1000, 1001, 3<<20 + 5}
	for i, n := range sizes {
		if err := o.Send(ctx, 1, &pb.TensorHeader{Microbatch: int32(i)}, pattern(n)); err != nil {
			t.Fatal(err)
		}
	}
	if err := o.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if len(s.got) != len(sizes) {
		t.Fatalf("received %d tensors, want %d", len(s.got), len(sizes))
	}
	for i, n := range sizes {
		if !bytes.Equal(s.got[i], pattern(n)) {
			t.Errorf("tensor %d (%d bytes) arrived changed or out of order", i, n)
		}
	}
}

func TestOversizeTensorRejected(t *testing.T) {
	_, addr := startSink(t, 1<<20)
	o, err := NewOutbox(Options{}, []string{addr}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	ctx := context.Background()
	if err := o.Send(ctx, 0, &pb.TensorHeader{}, pattern(1<<20+1)); err != nil {
		t.Fatal(err)
	}
	err = o.Flush(ctx)
	if status.Code(errors.Unwrap(err)) != codes.ResourceExhausted {
		t.Fatalf("oversize tensor: got %v, want ResourceExhausted", err)
	}
	// The link stays usable for tensors within the limit.
	if err := o.Send(ctx, 0, &pb.TensorHeader{}, pattern(1<<20)); err != nil {
		t.Fatal(err)
	}
	if err := o.Flush(ctx); err != nil {
		t.Fatalf("tensor at the limit: %v", err)
	}
}

func TestReceiveRejectsMalformedStreams(t *testing.T) {
	_, addr := startSink(t, 1<<20)
	o, _ := NewOutbox(Options{}, []string{addr}, nil)
	defer o.Close()
	l, err := o.link(0)
	if err != nil {
		t.Fatal(err)
	}
	cases := map[string][]*pb.TensorChunk{
		"no header":       {{Data: []byte{1}}},
		"short payload":   {{Header: &pb.TensorHeader{TotalBytes: 4}, Data: []byte{1, 2}}},
		"long payload":    {{Header: &pb.TensorHeader{TotalBytes: 1}, Data: []byte{1, 2}}},
		"second header":   {{Header: &pb.TensorHeader{TotalBytes: 2}, Data: []byte{1}}, {Header: &pb.TensorHeader{}, Data: []byte{2}}},
		"negative length": {{Header: &pb.TensorHeader{TotalBytes: -1}}},
	}
	for name, chunks := range cases {
		stream, err := l.client.SendTensor(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range chunks {
			if stream.Send(c) != nil {
				break
			}
		}
		if _, err := stream.CloseAndRecv(); status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s: got %v, want InvalidArgument", name, err)
		}
	}
}

func TestShapingDelaysAtLeastTheLatency(t *testing.T) {
	s, addr := startSink(t, 64<<20)
	const lat = 50 * time.Millisecond
	o, err := NewOutbox(Options{}, []string{addr}, FixedShaper{Latency: lat, BytesPerSec: 100 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	ctx := context.Background()
	start := time.Now()
	// 5 MiB at 100 MiB/s holds the link 50 ms each; two transfers queue.
	for range 2 {
		if err := o.Send(ctx, 0, &pb.TensorHeader{}, pattern(5<<20)); err != nil {
			t.Fatal(err)
		}
	}
	if err := o.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	// Lower bounds only: machines are noisy, never assert an upper bound.
	if d := s.at[0].Sub(start); d < lat+50*time.Millisecond {
		t.Errorf("first transfer took %v, want >= %v", d, lat+50*time.Millisecond)
	}
	if d := s.at[1].Sub(start); d < lat+100*time.Millisecond {
		t.Errorf("second transfer took %v, want >= %v (serialised on the link)", d, lat+100*time.Millisecond)
	}
}

func TestFloat32RoundTripIsBitExact(t *testing.T) {
	in := []float32{0, float32(math.Copysign(0, -1)), 1, -1.5, 3.4e38, 1e-45, float32(nanBits())}
	enc := EncodeFloat32s(in)
	out, err := DecodeFloat32s(&Payload{chunks: [][]byte{enc[:3], enc[3:3], enc[3:9], enc[9:]}})
	if err != nil {
		t.Fatal(err)
	}
	for i := range in {
		if f32bits(in[i]) != f32bits(out[i]) {
			t.Errorf("element %d: %x != %x", i, f32bits(in[i]), f32bits(out[i]))
		}
	}
	if _, err := DecodeFloat32s(&Payload{chunks: [][]byte{{1, 2}, {3}}}); !errors.Is(err, ErrMalformed) {
		t.Errorf("3 bytes: got %v, want ErrMalformed", err)
	}
}

// A slow link pushes back on its sender: with room for one queued tensor
// per stage of the link, Send blocks instead of buffering without bound.
func TestOutboxBackPressure(t *testing.T) {
	_, addr := startSink(t, 1<<20)
	o, err := NewOutbox(Options{QueueLen: 1}, []string{addr}, FixedShaper{BytesPerSec: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	ctx := context.Background()
	start := time.Now()
	// Each 50 KiB tensor holds the link ~49 ms. One is on the link, one
	// waits for its latency stage, one is queued: the 5th Send must wait
	// for at least two to clear the link.
	for range 5 {
		if err := o.Send(ctx, 0, &pb.TensorHeader{}, pattern(50<<10)); err != nil {
			t.Fatal(err)
		}
	}
	if d := time.Since(start); d < 90*time.Millisecond {
		t.Errorf("5 sends over a 1 MiB/s link with queues of 1 returned after %v; want >= 90ms (blocked)", d)
	}
	if err := o.Flush(ctx); err != nil {
		t.Fatal(err)
	}
}
