package faulttest

import (
	"context"
	"crypto/tls"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"stagecoach/coordinator"
	"stagecoach/internal/etcdx"
	"stagecoach/internal/tlsx"
	"stagecoach/internal/transport"
	pb "stagecoach/proto"
	"stagecoach/sim"
)

// hostileRSSBound is the peak resident memory a worker may reach under
// the attacks below: its default receive bounds admit at most one
// 256 MiB next-epoch tensor, held once as received chunks and once
// decoded, on top of a worker's own few tens of MiB.
const hostileRSSBound = 768 << 20

// hostileWorkerTTL is the workers' lease TTL here: the default, not the
// 2 s minimum the other fault tests use to detect failures fast. The
// attacker runs in the test process, beside the embedded etcd, and its
// 40 senders keep both cores of a 2-core machine busy. Under the race
// detector both workers' 2 s leases lapsed during the flood, in every
// run on a 2-core AMD EPYC VM (2026-12-07), the attacked worker's and the
// idle one's alike; with 5 s they hold. An attacker elsewhere shares
// neither the cores nor etcd's process; what this test checks is that
// the flood is refused within the memory bound and the job runs on.
const hostileWorkerTTL = etcdx.DefaultTTL

// TestHostileTensors plays a stranger on the network that knows the
// job's fence (as an attacker who read it from etcd or an error message
// would) and sends the worker of stage 1 junk while a GPipe job trains:
// a tiny current-epoch tensor from a sender outside the plan (this once
// failed the iteration, and the job after 8 retries), tensors for an
// iteration that cannot run, empty tensors, tensors two epochs ahead,
// 40 concurrent 256 MiB tensors and then 3 more of the next epoch (these
// once froze training and killed the worker by OOM at 8.8 GB). Every one
// is refused with a clear status (at most one next-epoch tensor waits in
// its bounded queue), the job trains to completion with no recovery and
// exactly the losses of the undisturbed single-process run, and neither
// worker's peak RSS passes hostileRSSBound.
//
// With mutual TLS on, the stranger holds the certificate of a spare
// worker of the job that no plan holds: its current-epoch tensors are
// denied by the sender check, and its next-epoch ones meet the same
// bounds.
func TestHostileTensors(t *testing.T) {
	for _, tlsOn := range []bool{false, true} {
		name := "plaintext"
		if tlsOn {
			name = "mutual-tls"
		}
		t.Run(name, func(t *testing.T) { hostileTensors(t, tlsOn) })
	}
}

func hostileTensors(t *testing.T, tlsOn bool) {
	const steps, attackAt, waitAt = 12, 2, 8
	job := "hostile-tensors"
	var e *env
	var coordTLS, strangerTLS *tls.Config
	if tlsOn {
		job += "-tls"
		e, coordTLS, strangerTLS = newTLSEnv(t, job, "w0", "w1")
	} else {
		e = newEnv(t, job)
		e.workerTTL = hostileWorkerTTL
		e.startWorkers(t, "w0", "w1")
	}
	tc := tiny(2, 4)
	want, _ := reference(t, tc, e.corpus, steps)
	var recoveries []coordinator.Recovery
	var mu sync.Mutex
	attackDone := make(chan []string, 1)
	// The attacker, the workers, etcd and this coordinator share the
	// test machine's cores: forty 256 MiB streams (TLS-encrypted in one
	// case) can starve the coordinator's lease renewals past etcd's
	// minimum TTL, which is the machine's doing, not the peer's. Its
	// lease gets 10 s; the workers keep the minimum.
	cfg := coordinator.Config{Simulator: sim.Simulator{}, Job: job, Endpoints: e.endpoints, TTL: 10, Workers: 2, Stages: 2, Schedule: "gpipe",
		Train: tc, Steps: steps, CorpusDir: e.corpus, OutDir: t.TempDir(), RPCTimeout: 60 * time.Second, TLS: coordTLS,
		OnRecovery: func(r coordinator.Recovery) { mu.Lock(); recoveries = append(recoveries, r); mu.Unlock() },
		OnStep: func(r coordinator.StepReport) {
			switch r.Step {
			case attackAt:
				m := readPlanManifest(t, e)
				go func() {
					attackDone <- attack(t, job, m, strangerTLS, tc.MicrobatchSize, tc.Model.Ctx, tc.Model.Dim, r.Step+1)
				}()
			case waitAt:
				// The attack overlapped the steps since attackAt; the
				// job goes on once it is over.
				results := <-attackDone
				attackDone <- results
			}
		}}
	sum := runCoordinator(t, cfg, 3*time.Minute)
	results := <-attackDone
	for _, r := range results {
		t.Log(r)
	}
	e.checkCommits(t, steps)
	if len(recoveries) != 0 {
		t.Errorf("the attacks caused recoveries: %+v", recoveries)
	}
	if len(sum.Steps) != steps {
		t.Fatalf("%d steps reported, want %d", len(sum.Steps), steps)
	}
	for i, s := range sum.Steps {
		if s.Loss != want[i] {
			t.Errorf("step %d loss %v, undisturbed run %v", s.Step, s.Loss, want[i])
		}
	}
	for _, n := range []string{"w0", "w1"} {
		p := e.workers[n]
		rss := peakRSS(t, p.cmd.Process.Pid)
		t.Logf("worker %s: peak RSS %.0f MiB (bound %d MiB), %d refusals logged", n, float64(rss)/(1<<20), hostileRSSBound>>20, strings.Count(p.log.String(), "refused"))
		if rss > hostileRSSBound {
			t.Errorf("worker %s: peak RSS %d bytes, over the %d bound", n, rss, hostileRSSBound)
		}
	}
}

// newTLSEnv is newEnv with mutual TLS everywhere: certificates of one CA
// for etcd, and the job's role certificates for the coordinator, the
// workers and a spare worker "mallory" that no plan holds; an embedded
// etcd that requires them; worker processes started with theirs. It
// returns the coordinator's and mallory's TLS configurations.
func newTLSEnv(t *testing.T, job string, workers ...string) (*env, *tls.Config, *tls.Config) {
	t.Helper()
	dir := t.TempDir()
	certs, err := tlsx.JobCerts(job, true, append(workers, "mallory"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tlsx.Issue(dir, append(certs, tlsx.Cert{File: "etcd"}), time.Hour); err != nil {
		t.Fatal(err)
	}
	load := func(host string) *tls.Config {
		c, err := tlsx.Load(tlsx.FilesFor(dir, host))
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	ctx := context.Background()
	srv, err := etcdx.StartEmbedded(ctx, etcdx.EmbedConfig{Dir: t.TempDir(), TLS: tlsx.FilesFor(dir, "etcd")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	coord := load("coordinator")
	cli, err := etcdx.DialTLS(ctx, srv.Endpoints(), 0, coord)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	keys, err := etcdx.NewKeys(job)
	if err != nil {
		t.Fatal(err)
	}
	e := &env{job: job, endpoints: srv.Endpoints(), cli: cli, keys: keys, corpus: writeCorpus(t), workers: map[string]*proc{}, workerTTL: hostileWorkerTTL}
	for _, n := range workers {
		f := tlsx.FilesFor(dir, n)
		e.workers[n] = start(t, "worker "+n, "worker", "--etcd", strings.Join(e.endpoints, ","), "--job", job, "--name", n,
			"--ttl", fmt.Sprint(e.workerLease()), "--data-dir", t.TempDir(), "--tls-cert", f.Cert, "--tls-key", f.Key, "--tls-ca", f.CA)
	}
	e.waitRegistered(t, 30*time.Second, workers...)
	return e, coord, load("mallory")
}

// readPlanManifest reads the job's current plan manifest from etcd.
func readPlanManifest(t *testing.T, e *env) coordinator.PlanManifest {
	t.Helper()
	resp, err := e.cli.Get(context.Background(), e.keys.PlanPrefix(), lastKey()...)
	if err != nil || len(resp.Kvs) == 0 {
		t.Errorf("read plan: %v", err)
		return coordinator.PlanManifest{}
	}
	var m coordinator.PlanManifest
	if err := jsonUnmarshal(resp.Kvs[0].Value, &m); err != nil {
		t.Error(err)
	}
	return m
}

// attack sends the hostile tensors to the worker of stage 1 and returns
// one line per attack with its outcome. Mismatched outcomes are test
// errors.
func attack(t *testing.T, job string, m coordinator.PlanManifest, tc *tls.Config, samples, ctx, dim int, iteration int64) []string {
	var target, sender = -1, -1
	for i, w := range m.Workers {
		for _, s := range w.Stages {
			switch s {
			case 1:
				target = i
			case 0:
				sender = i
			}
		}
	}
	if target < 0 || sender < 0 {
		t.Errorf("plan %+v has no stage 0 and 1 workers", m)
		return nil
	}
	addr := m.Workers[target].Addr
	dial := func() (pb.PeerClient, func()) {
		creds := grpc.WithTransportCredentials(insecure.NewCredentials())
		if tc != nil {
			creds = tlsx.DialOption(tc)
		}
		conn, err := grpc.NewClient(addr, append(transport.Options{}.DialOptions(), creds)...)
		if err != nil {
			t.Error(err)
			return nil, func() {}
		}
		return pb.NewPeerClient(conn), func() { conn.Close() }
	}
	peer, closePeer := dial()
	defer closePeer()
	header := func(epoch, it int64, from int, shape ...int32) *pb.TensorHeader {
		return &pb.TensorHeader{Fence: &pb.Fence{Job: job, LeaderRev: m.LeaderRev, Epoch: epoch},
			Iteration: it, Kind: pb.TensorKind_TENSOR_KIND_ACTIVATION, Microbatch: 0, Stage: 1,
			From: int32(from), To: int32(target), Shape: shape}
	}
	var out []string
	var outMu sync.Mutex // send runs from the concurrent senders below too
	send := func(what string, c pb.PeerClient, h *pb.TensorHeader, payload []byte, codes ...codes.Code) codes.Code {
		t0 := time.Now()
		err := transport.Send(context.Background(), c, h, payload, 0)
		got := status.Code(err)
		ok := false
		for _, c := range codes {
			ok = ok || got == c
		}
		line := fmt.Sprintf("%s: %v in %.3f s (%v)", what, got, time.Since(t0).Seconds(), err)
		if !ok {
			t.Errorf("%s, want one of %v", line, codes)
		}
		outMu.Lock()
		out = append(out, line)
		outMu.Unlock()
		return got
	}
	small := func() []byte { return make([]byte, 4*samples*ctx*dim) }
	// Under mutual TLS the stranger is a worker of the job that no plan
	// holds: its current-epoch tensors are refused by the sender check
	// first; its next-epoch ones (whose sender is checked only at their
	// Configure) meet the bounds.
	cur := func(c codes.Code) codes.Code {
		if tc != nil {
			return codes.PermissionDenied
		}
		return c
	}
	ep := m.Epoch
	send("stranger's tiny current-epoch activation (sender outside the plan)", peer,
		header(ep, iteration, target, int32(samples), int32(ctx), int32(dim)), small(), cur(codes.InvalidArgument))
	send("activation for an iteration that cannot run", peer,
		header(ep, iteration+5, sender, int32(samples), int32(ctx), int32(dim)), small(), cur(codes.InvalidArgument))
	send("empty tensor", peer, header(ep, iteration, sender, 0, int32(ctx), int32(dim)), nil, cur(codes.InvalidArgument))
	send("empty tensor of the next epoch", peer, header(ep+1, iteration, sender, 0, int32(ctx), int32(dim)), nil, codes.InvalidArgument)
	send("tensor two epochs ahead", peer, header(ep+2, iteration, sender, int32(samples), int32(ctx), int32(dim)), small(), codes.FailedPrecondition)

	big := make([]byte, 256<<20) // shared by every send: the attacker's memory is not under test
	bigShape := []int32{1 << 10, 1 << 8, 1 << 8}
	var wg sync.WaitGroup
	var mu sync.Mutex
	admitted := 0
	conns := make([]pb.PeerClient, 5)
	for i := range conns {
		c, done := dial()
		defer done()
		conns[i] = c
	}
	t0 := time.Now()
	for i := range 40 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			epoch := ep + int64(i%2) // half current, half next epoch
			got := send(fmt.Sprintf("256 MiB tensor %d of 40 concurrent (epoch +%d)", i, i%2), conns[i%len(conns)],
				header(epoch, iteration, sender, bigShape...), big, codes.OK, cur(codes.InvalidArgument), codes.ResourceExhausted)
			mu.Lock()
			defer mu.Unlock()
			if got == codes.OK {
				admitted++
			}
		}()
	}
	wg.Wait()
	out = append(out, fmt.Sprintf("40 concurrent 256 MiB tensors settled in %.2f s", time.Since(t0).Seconds()))
	for i := range 3 {
		if send(fmt.Sprintf("256 MiB next-epoch tensor %d of 3", i), peer, header(ep+1, iteration, sender, bigShape...), big,
			codes.OK, codes.ResourceExhausted) == codes.OK {
			admitted++
		}
	}
	if admitted > 1 {
		t.Errorf("%d 256 MiB tensors admitted, the next-epoch queue holds one", admitted)
	}
	return append(out, fmt.Sprintf("%d of the 43 large tensors admitted to the next-epoch queue", admitted))
}

// peakRSS is a process's peak resident set (VmHWM) in bytes.
func peakRSS(t *testing.T, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatalf("read the worker's memory: %v", err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) == 3 && f[0] == "VmHWM:" {
			kb, err := strconv.ParseInt(f[1], 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb << 10
		}
	}
	t.Fatalf("no VmHWM in /proc/%d/status", pid)
	return 0
}
