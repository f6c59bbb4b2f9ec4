package transport

import (
	"context"
	"io"
	"net"
	"testing"
	"time"

	pb "stagecoach/proto"
)

const benchBytes = 64 << 20

// BenchmarkTransport streams a 64 MiB tensor through an Outbox to a real
// gRPC server on loopback, and the same bytes through a plain TCP
// connection, in the same run; it reports both rates and their ratio
// (DESIGN 9 aims at >= 0.5). Run with:
//
//	go test -run '^$' -bench BenchmarkTransport -benchtime 20x ./internal/transport
func BenchmarkTransport(b *testing.B) {
	b.Run("codec=tensor", func(b *testing.B) { benchTransport(b, Options{}) })
	b.Run("codec=proto", func(b *testing.B) { benchTransport(b, Options{ProtoCodec: true}) })
}

func benchTransport(b *testing.B, opts Options) {
	s, addr := startSink(b, benchBytes)
	s.discard = true
	o, err := NewOutbox(opts, []string{addr}, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer o.Close()
	tcp := startTCPSink(b)
	conn, err := net.Dial("tcp", tcp)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	payload := pattern(benchBytes)
	ack := make([]byte, 1)
	ctx := context.Background()
	// Warm up both paths (connection setup, window growth).
	if err := o.Send(ctx, 0, &pb.TensorHeader{}, payload); err != nil {
		b.Fatal(err)
	}
	if err := o.Flush(ctx); err != nil {
		b.Fatal(err)
	}
	var grpcTime, tcpTime time.Duration
	b.SetBytes(benchBytes)
	b.ResetTimer()
	for range b.N {
		t0 := time.Now()
		if err := o.Send(ctx, 0, &pb.TensorHeader{}, payload); err != nil {
			b.Fatal(err)
		}
		if err := o.Flush(ctx); err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		if _, err := conn.Write(payload); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(conn, ack); err != nil {
			b.Fatal(err)
		}
		grpcTime += t1.Sub(t0)
		tcpTime += time.Since(t1)
	}
	b.StopTimer()
	mb := float64(b.N) * benchBytes / 1e6
	g, r := mb/grpcTime.Seconds(), mb/tcpTime.Seconds()
	b.ReportMetric(g, "grpc-MB/s")
	b.ReportMetric(r, "tcp-MB/s")
	b.ReportMetric(g/r, "ratio")
}

// startTCPSink accepts one connection and, per benchBytes read into a
// buffer (as the gRPC receiver does), answers one byte.
func startTCPSink(b *testing.B) string {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { lis.Close() })
	go func() {
		c, err := lis.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		buf := make([]byte, benchBytes)
		for {
			if _, err := io.ReadFull(c, buf); err != nil {
				return
			}
			if _, err := c.Write([]byte{1}); err != nil {
				return
			}
		}
	}()
	return lis.Addr().String()
}
