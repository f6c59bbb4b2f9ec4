package transport

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"

	"stagecoach/internal/tlsx"
	pb "stagecoach/proto"
)

const benchBytes = 64 << 20

// BenchmarkTransport streams a 64 MiB tensor through an Outbox to a real
// gRPC server on loopback, and the same bytes through a plain TCP
// connection, in the same run; it reports both rates and their ratio
// (DESIGN 9 aims at >= 0.5). The tls=on variants run the gRPC hop over
// mutual TLS 1.3 as workers do with certificates (the TCP baseline stays
// plaintext, so their ratio includes the cost of TLS). Run with:
//
//	go test -run '^$' -bench BenchmarkTransport -benchtime 20x ./internal/transport
func BenchmarkTransport(b *testing.B) {
	b.Run("codec=tensor", func(b *testing.B) { benchTransport(b, Options{}, nil) })
	b.Run("codec=proto", func(b *testing.B) { benchTransport(b, Options{ProtoCodec: true}, nil) })
	b.Run("codec=tensor/tls=on", func(b *testing.B) { benchTransport(b, Options{}, benchTLS(b)) })
	b.Run("codec=proto/tls=on", func(b *testing.B) { benchTransport(b, Options{ProtoCodec: true}, benchTLS(b)) })
}

// benchTLS is a node configuration from a freshly generated demo CA.
func benchTLS(b *testing.B) *tls.Config {
	dir := b.TempDir()
	if _, err := tlsx.Generate(dir, []string{"node"}, time.Hour); err != nil {
		b.Fatal(err)
	}
	c, err := tlsx.Load(tlsx.FilesFor(dir, "node"))
	if err != nil {
		b.Fatal(err)
	}
	return c
}

// benchTransport measures opts over plaintext gRPC, or over mutual TLS
// with tc (both ends use the same node certificate).
func benchTransport(b *testing.B, opts Options, tc *tls.Config) {
	var dial []grpc.DialOption
	var serve []grpc.ServerOption
	if tc != nil {
		dial, serve = []grpc.DialOption{tlsx.DialOption(tc)}, []grpc.ServerOption{tlsx.ServerOption(tc)}
	}
	s, addr := startSink(b, benchBytes, serve...)
	s.discard = true
	o, err := NewOutbox(opts, []string{addr}, nil, dial...)
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
