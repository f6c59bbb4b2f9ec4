package worker_test

import (
	"context"
	"crypto/tls"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"stagecoach/internal/metrics"
	"stagecoach/internal/metrics/metricstest"
	"stagecoach/internal/tlsx"
	"stagecoach/internal/transport"
	"stagecoach/model"
	pb "stagecoach/proto"
	"stagecoach/scheduler"
	"stagecoach/worker"
	"stagecoach/worker/workertest"
)

// authzRev is the leader revision of the authorization tests: distinctive,
// so a refusal echoing it would be seen.
const authzRev = 90210

// roleCerts issues a CA and certificates into a temporary directory:
// testJob's coordinator and workers w0, w1, a worker "mallory" of testJob
// that is in no plan, the coordinator of another job, and a probe without
// a role.
func roleCerts(t *testing.T) map[string]*tls.Config {
	t.Helper()
	dir := t.TempDir()
	certs, err := tlsx.JobCerts(testJob, true, []string{"w0", "w1", "mallory"})
	if err != nil {
		t.Fatal(err)
	}
	other := tlsx.Coordinator("other-job")
	certs = append(certs, tlsx.Cert{File: "other-coordinator", ID: &other}, tlsx.Cert{File: "probe"})
	if _, err := tlsx.Issue(dir, certs, time.Hour); err != nil {
		t.Fatal(err)
	}
	out := map[string]*tls.Config{}
	for _, c := range certs {
		tc, err := tlsx.Load(tlsx.FilesFor(dir, c.File))
		if err != nil {
			t.Fatal(err)
		}
		out[c.File] = tc
	}
	return out
}

func dialWith(t *testing.T, addr string, tc *tls.Config) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(addr, append(transport.Options{}.DialOptions(), tlsx.DialOption(tc))...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// TestAuthorizationUnderMutualTLS: two TLS workers train a 2-stage job
// driven under the coordinator's certificate, while callers holding other
// certificates of the same CA (a worker's, a spare worker's, another
// job's coordinator's, a role-less probe's) call every control method and
// send tensors under false names. Every such call is PermissionDenied,
// counted by method and reason, and its message names neither the job nor
// the leader revision; the job trains on with the trainer's losses bit
// for bit.
func TestAuthorizationUnderMutualTLS(t *testing.T) {
	certs := roleCerts(t)
	cfg := trainConfig(4, 2, 2)
	ref, err := model.NewTrainer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	plan, err := scheduler.Generate("gpipe", scheduler.Spec{Stages: 2, Microbatches: 2, Layers: 4, Samples: 2})
	if err != nil {
		t.Fatal(err)
	}
	names := []string{"w0", "w1"}
	c := workertest.Start(t, 2, testJob, func(i int, cfg *worker.Config) { cfg.TLS = certs[names[i]] })
	var scrape []string
	for _, s := range c.Servers {
		reg := metrics.NewRegistry()
		s.SetMetrics(metrics.NewWorker(reg))
		srv, err := metrics.Serve("127.0.0.1:0", reg, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { srv.Close() })
		scrape = append(scrape, "http://"+srv.Addr()+"/metrics")
	}
	d := &workertest.Driver{Clients: workertest.DialTLS(t, c.Addrs, certs["coordinator"]), Peers: c.Addrs, Names: names,
		Plan: plan, Train: ref.Cfg, Fence: &pb.Fence{Job: testJob, LeaderRev: authzRev, Epoch: 1}}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := d.Configure(ctx, nil); err != nil {
		t.Fatal(err)
	}
	step := func(n int) {
		t.Helper()
		got, want := stepBoth(t, ctx, d, ref, 11, n, cfg.Microbatches, cfg.MicrobatchSize)
		if math.Float64bits(got.Loss) != math.Float64bits(want.Loss) {
			t.Fatalf("step %d: loss %v, trainer %v", n, got.Loss, want.Loss)
		}
	}
	step(1)

	denied := func(what string, err error) {
		t.Helper()
		wantCode(t, what, err, codes.PermissionDenied)
		if err != nil && (strings.Contains(err.Error(), testJob) || strings.Contains(err.Error(), "90210")) {
			t.Errorf("%s: refusal echoes the job or the leader revision: %v", what, err)
		}
	}
	evil := filepath.Join(t.TempDir(), "evil")
	for _, who := range []string{"w0", "mallory", "other-coordinator", "probe"} {
		w := pb.NewWorkerClient(dialWith(t, c.Addrs[1], certs[who]))
		_, err := w.Configure(ctx, &pb.ConfigureRequest{Fence: d.Fence, Worker: 1, Peers: c.Addrs})
		denied(who+": Configure at the current revision", err)
		_, err = w.RunIteration(ctx, &pb.RunIterationRequest{Fence: d.Fence, Iteration: 2})
		denied(who+": RunIteration", err)
		_, err = w.Step(ctx, &pb.StepRequest{Fence: d.Fence, Iteration: 1, ClipScale: 1, Lr: 1})
		denied(who+": Step", err)
		_, err = w.SaveCheckpoint(ctx, &pb.CheckpointRequest{Fence: d.Fence, Dir: evil})
		denied(who+": SaveCheckpoint", err)
		_, err = w.LoadCheckpoint(ctx, &pb.CheckpointRequest{Fence: d.Fence, Dir: evil, Step: 1})
		denied(who+": LoadCheckpoint", err)
		_, err = w.Status(ctx, &pb.StatusRequest{})
		denied(who+": Status", err)
		// Any certificate of the CA may probe health.
		hr, err := healthpb.NewHealthClient(dialWith(t, c.Addrs[1], certs[who])).Check(ctx, &healthpb.HealthCheckRequest{})
		if err != nil || hr.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Errorf("%s: health check: %v, %v", who, hr, err)
		}
	}
	if _, err := os.Stat(evil); !os.IsNotExist(err) {
		t.Errorf("a refused SaveCheckpoint touched %s: %v", evil, err)
	}

	// Tensors of the current epoch under a false name: worker 1 expects
	// microbatch 0's activation from plan worker 0 (w0).
	for _, who := range []string{"mallory", "w1", "coordinator"} {
		h, p := activation(d)
		h.Iteration = 2
		err := transport.Send(ctx, pb.NewPeerClient(dialWith(t, c.Addrs[1], certs[who])), h, p, 0)
		denied(who+": tensor claiming to come from w0", err)
	}

	// A tensor of the next epoch arrives before its plan: admitted on the
	// role alone, then dropped when Configure names the sender.
	h, p := activation(d)
	h.Fence.Epoch, h.Iteration = 2, 2
	if err := transport.Send(ctx, pb.NewPeerClient(dialWith(t, c.Addrs[1], certs["mallory"])), h, p, 0); err != nil {
		t.Fatalf("early tensor of the next epoch: %v", err)
	}
	d.Fence = &pb.Fence{Job: testJob, LeaderRev: authzRev, Epoch: 2}
	if err := d.Configure(ctx, nil); err != nil {
		t.Fatal(err)
	}
	// Had the forged activation stayed queued, step 2 would have used it.
	step(2)

	s0, s1 := metricstest.Scrape(t, scrape[0]), metricstest.Scrape(t, scrape[1])
	if v, _ := s0.Get("stagecoach_worker_calls_denied_total", "method", "Step", "reason", "wrong_role"); v != 0 {
		t.Errorf("worker 0 counted %v denied Steps; it was never called", v)
	}
	for _, m := range []struct {
		method, reason string
		want           float64
	}{
		{"Step", "wrong_role", 2}, // w0, mallory
		{"Step", "other_job", 1},
		{"Step", "no_role", 1},
		{"Configure", "wrong_role", 2},
		{"Status", "no_role", 1},
		{"SendTensor", "wrong_role", 1},   // the coordinator
		{"SendTensor", "wrong_sender", 3}, // mallory, w1, the early tensor
	} {
		if v, _ := s1.Get("stagecoach_worker_calls_denied_total", "method", m.method, "reason", m.reason); v != m.want {
			t.Errorf("denied %s (%s): %v, want %v", m.method, m.reason, v, m.want)
		}
	}
}
