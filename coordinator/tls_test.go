package coordinator_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"math"
	"testing"
	"time"

	"stagecoach/coordinator"
	"stagecoach/internal/etcdx"
	"stagecoach/internal/tlsx"
	"stagecoach/sim"
	"stagecoach/worker"
)

// With TLS on everywhere (etcd serving client TLS with client
// certificates required, every worker requiring them, the coordinator and
// the workers presenting their role certificates, the workers checking
// fences against the election) a GPipe job trains exactly as the
// single-process trainer does.
func TestJobOverMutualTLS(t *testing.T) {
	const job, steps, n = "tls", 2, 2
	dir := t.TempDir()
	var names []string
	for i := range n {
		names = append(names, fmt.Sprintf("w%d", i))
	}
	certs, err := tlsx.JobCerts(job, true, names)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tlsx.Issue(dir, append(certs, tlsx.Cert{File: "etcd"}), time.Hour); err != nil {
		t.Fatal(err)
	}
	load := func(h string) *tls.Config {
		c, err := tlsx.Load(tlsx.FilesFor(dir, h))
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	ctx := context.Background()
	e, err := etcdx.StartEmbedded(ctx, etcdx.EmbedConfig{Dir: t.TempDir(), TLS: tlsx.FilesFor(dir, "etcd")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	keys, _ := etcdx.NewKeys(job)
	for i := range n {
		name := fmt.Sprintf("w%d", i)
		tc := load(name)
		// Each worker registers and watches the election through its
		// own TLS etcd client, as `stagecoach worker --tls-*` does.
		cli, err := etcdx.DialTLS(ctx, e.Endpoints(), 0, tc)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cli.Close() })
		wctx, wcancel := context.WithCancel(ctx)
		t.Cleanup(wcancel)
		leader, err := etcdx.WatchLeader(wctx, cli, keys)
		if err != nil {
			t.Fatal(err)
		}
		w, err := worker.New(worker.Config{Name: name, Listen: "127.0.0.1:0", Job: job, DataDir: t.TempDir(), TLS: tc,
			Leader: leader, Logf: func(string, ...any) {}})
		if err != nil {
			t.Fatal(err)
		}
		addr, err := w.Start()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { w.Stop(time.Second) })
		s, err := etcdx.NewSession(ctx, cli, 2)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		if err := etcdx.Register(ctx, s, keys, etcdx.Member{Name: name, Addr: addr}); err != nil {
			t.Fatal(err)
		}
	}

	corpus := writeCorpus(t)
	tc := tinyTrain(3)
	want, _ := reference(t, tc, corpus, steps)
	var got []float64
	co, err := coordinator.New(coordinator.Config{Simulator: sim.Simulator{},
		Job: job, Endpoints: e.Endpoints(), TTL: 2, Workers: n, Schedule: "gpipe", Train: tc, Steps: steps,
		CorpusDir: corpus, OutDir: t.TempDir(), TLS: load("coordinator"),
		OnStep: func(r coordinator.StepReport) { got = append(got, r.Loss) },
	})
	if err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if _, err := co.Run(rctx); err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Fatalf("%d losses, want %d", len(got), len(want))
	}
	for i := range want {
		if math.Float64bits(got[i]) != math.Float64bits(want[i]) {
			t.Fatalf("losses over TLS differ from the single-process trainer:\n got %v\nwant %v", got, want)
		}
	}
}
