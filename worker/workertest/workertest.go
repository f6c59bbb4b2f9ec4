// Package workertest starts real Stagecoach workers on loopback for tests
// (real gRPC on 127.0.0.1:0, one temporary data dir each) and offers a
// minimal driver doing what the coordinator does per iteration: Configure
// every worker, RunIteration on all in parallel, reduce the gradient norm
// and losses exactly as the single-process trainer does, Step all.
package workertest

import (
	"crypto/tls"
	"fmt"
	"testing"
	"time"

	"google.golang.org/grpc"

	"stagecoach/internal/tlsx"
	pb "stagecoach/proto"
	"stagecoach/worker"
)

// Cluster is a set of running workers.
type Cluster struct {
	Servers []*worker.Server
	// Addrs[i] serves both the Worker and the Peer service of worker i.
	Addrs []string
	// Dirs[i] is worker i's data dir.
	Dirs []string
	Job  string
}

// Start runs n workers of job on loopback; they stop when the test ends.
// tune, if not nil, adjusts each worker's config before it starts.
func Start(t testing.TB, n int, job string, tune func(i int, c *worker.Config)) *Cluster {
	t.Helper()
	c := &Cluster{Job: job}
	for i := range n {
		cfg := worker.Config{
			Name:    fmt.Sprintf("w%d", i),
			Listen:  "127.0.0.1:0",
			Job:     job,
			DataDir: t.TempDir(),
			Logf:    t.Logf,
		}
		if tune != nil {
			tune(i, &cfg)
		}
		s, err := worker.New(cfg)
		if err != nil {
			t.Fatalf("workertest: worker %d: %v", i, err)
		}
		addr, err := s.Start()
		if err != nil {
			t.Fatalf("workertest: worker %d: %v", i, err)
		}
		// Logf must not be called after the test ends: stop first.
		t.Cleanup(func() { s.Stop(2 * time.Second) })
		c.Servers = append(c.Servers, s)
		c.Addrs = append(c.Addrs, addr)
		c.Dirs = append(c.Dirs, cfg.DataDir)
	}
	return c
}

// Dial returns a Worker client per address; connections close with the
// test.
func Dial(t testing.TB, addrs []string) []pb.WorkerClient {
	t.Helper()
	return DialTLS(t, addrs, nil)
}

// DialTLS is Dial presenting tc's certificate (tlsx.DialOption); nil dials
// plaintext.
func DialTLS(t testing.TB, addrs []string, tc *tls.Config) []pb.WorkerClient {
	t.Helper()
	var out []pb.WorkerClient
	for _, a := range addrs {
		conn, err := grpc.NewClient(a, tlsx.DialOption(tc),
			grpc.WithDefaultCallOptions(grpc.MaxCallSendMsgSize(worker.DefaultMaxControlBytes)))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		out = append(out, pb.NewWorkerClient(conn))
	}
	return out
}
