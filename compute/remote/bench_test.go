package remote_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"testing"

	"stagecoach/compute"
	"stagecoach/compute/remote"
	"stagecoach/compute/serve"
)

// echo is a backend whose stages return Forward's input: what is left of
// a call is the protocol's cost.
type echo struct{}

type echoStage struct{ compute.Stage }

const echoWidth = 1024 // floats per row: 4 KiB

func (echo) Name() string { return "echo" }
func (echo) Close() error { return nil }
func (echo) Load(context.Context, compute.LoadSpec) (compute.Stage, error) {
	return echoStage{}, nil
}
func (echoStage) Describe() compute.Description {
	return compute.Description{Backend: "echo", Width: echoWidth}
}
func (echoStage) Forward(_ int, x *compute.Tensor) (*compute.Tensor, error) { return x, nil }
func (echoStage) Close() error                                              { return nil }

var hopSizes = []int{256 << 10, 1 << 20, 16 << 20}

// BenchmarkHop measures a tensor's round trip (Forward of an echo stage:
// the bytes there and back) through compute/remote and compute/serve over
// a Unix socket, beside the same bytes written and read back over a
// plain Unix socket pair. Bytes/s count both directions.
func BenchmarkHop(b *testing.B) {
	for _, n := range hopSizes {
		b.Run(fmt.Sprintf("protocol/%dKiB", n>>10), func(b *testing.B) {
			rb := benchServer(b)
			st, err := rb.Load(context.Background(), compute.LoadSpec{})
			if err != nil {
				b.Fatal(err)
			}
			rows := n / (4 * echoWidth)
			x := &compute.Tensor{Shape: []int{1, rows, echoWidth}, Data: make([]float32, rows*echoWidth)}
			b.SetBytes(2 * int64(n))
			b.ResetTimer()
			for range b.N {
				if _, err := st.Forward(0, x); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(fmt.Sprintf("unix-socket/%dKiB", n>>10), func(b *testing.B) {
			c, s := socketPair(b)
			go func() {
				buf := make([]byte, n)
				for {
					if _, err := io.ReadFull(s, buf); err != nil {
						return
					}
					if _, err := s.Write(buf); err != nil {
						return
					}
				}
			}()
			out, in := make([]byte, n), make([]byte, n)
			b.SetBytes(2 * int64(n))
			b.ResetTimer()
			for range b.N {
				if _, err := c.Write(out); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(c, in); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func benchServer(b *testing.B) *remote.Backend {
	dir := b.TempDir()
	addr := "unix://" + dir + "/s.sock"
	srv, err := serve.New(echo{}, serve.Options{})
	if err != nil {
		b.Fatal(err)
	}
	lis, err := serve.Listen(addr)
	if err != nil {
		b.Fatal(err)
	}
	go func() { _ = srv.Serve(lis) }()
	b.Cleanup(srv.Stop)
	rb, err := remote.Dial(context.Background(), addr, remote.Options{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = rb.Close() })
	return rb
}

// socketPair is a connected pair of Unix sockets.
func socketPair(b *testing.B) (*net.UnixConn, *net.UnixConn) {
	path := b.TempDir() + "/p.sock"
	lis, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		b.Fatal(err)
	}
	defer lis.Close()
	accepted := make(chan *net.UnixConn, 1)
	go func() {
		s, err := lis.AcceptUnix()
		if err != nil {
			accepted <- nil
			return
		}
		accepted <- s
	}()
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		b.Fatal(err)
	}
	s := <-accepted
	if s == nil {
		b.Fatal(errors.New("accept failed"))
	}
	b.Cleanup(func() { c.Close(); s.Close() })
	return c, s
}
