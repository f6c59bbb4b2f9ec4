package faulttest

import (
	"context"
	"crypto/tls"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"stagecoach/coordinator"
	"stagecoach/internal/etcdx"
	"stagecoach/internal/metrics/metricstest"
	"stagecoach/internal/tlsx"
	"stagecoach/internal/transport"
	pb "stagecoach/proto"
	"stagecoach/sim"
)

// hostile is a job of real worker processes under attack: what an
// attacker on the network learns from etcd (the leader revision, the
// plan epoch, the workers' addresses) and the certificates it may hold.
type hostile struct {
	*env
	secure  bool
	certs   string // certificate directory (secure only)
	metrics map[string]string
}

// load reads file's certificate, key and the CA from h.certs.
func (h *hostile) load(t *testing.T, file string) *tls.Config {
	t.Helper()
	c, err := tlsx.Load(tlsx.FilesFor(h.certs, file))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// newHostile starts an embedded etcd (serving mutual TLS when secure) and
// worker processes names of job, each serving metrics; secure issues the
// job's role certificates, a spare worker's ("mallory", never started)
// and a role-less one ("probe", the test's etcd client).
func newHostile(t *testing.T, job string, secure bool, names ...string) *hostile {
	t.Helper()
	ctx := context.Background()
	h := &hostile{secure: secure, metrics: map[string]string{}}
	ec := etcdx.EmbedConfig{Dir: t.TempDir()}
	var cliTLS *tls.Config
	if secure {
		h.certs = t.TempDir()
		certs, err := tlsx.JobCerts(job, true, append(names, "mallory"))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tlsx.Issue(h.certs, append(certs, tlsx.Cert{File: "etcd"}, tlsx.Cert{File: "probe"}), time.Hour); err != nil {
			t.Fatal(err)
		}
		ec.TLS = tlsx.FilesFor(h.certs, "etcd")
		cliTLS = h.load(t, "probe")
	}
	e, err := etcdx.StartEmbedded(ctx, ec)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	cli, err := etcdx.DialTLS(ctx, e.Endpoints(), 0, cliTLS)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	keys, err := etcdx.NewKeys(job)
	if err != nil {
		t.Fatal(err)
	}
	h.env = &env{job: job, endpoints: e.Endpoints(), cli: cli, keys: keys, corpus: writeCorpus(t), root: t.TempDir(), workers: map[string]*proc{}}
	for _, n := range names {
		args := []string{"worker", "--etcd", strings.Join(h.endpoints, ","), "--job", job, "--name", n, "--ttl", fmt.Sprint(ttl),
			"--data-dir", t.TempDir(), "--checkpoint-root", h.root, "--metrics-addr", "127.0.0.1:0"}
		if secure {
			f := tlsx.FilesFor(h.certs, n)
			args = append(args, "--tls-cert", f.Cert, "--tls-key", f.Key, "--tls-ca", f.CA)
		}
		h.workers[n] = start(t, "worker "+n, args...)
	}
	h.waitRegistered(t, 30*time.Second, names...)
	re := regexp.MustCompile(`serving metrics on http://([^/\s"]+)/metrics`)
	for _, n := range names {
		m := re.FindStringSubmatch(h.workers[n].log.String())
		if m == nil {
			t.Fatalf("worker %s logged no metrics address:\n%s", n, h.workers[n].log.String())
		}
		h.metrics[n] = "http://" + m[1] + "/metrics"
	}
	return h
}

// leaked is what anyone who can read the job's etcd keys knows.
type leaked struct {
	rev, epoch int64
	addrs      []string
}

func (h *hostile) leak(t *testing.T) leaked {
	t.Helper()
	ctx := context.Background()
	var l leaked
	resp, err := h.cli.Get(ctx, h.keys.ElectionPrefix(), clientv3.WithFirstCreate()...)
	if err != nil || len(resp.Kvs) == 0 {
		t.Fatalf("read the leader key: %v", err)
	}
	l.rev = resp.Kvs[0].CreateRevision
	resp, err = h.cli.Get(ctx, h.keys.PlanPrefix(), append([]clientv3.OpOption{clientv3.WithPrefix()}, lastKey()...)...)
	if err != nil || len(resp.Kvs) == 0 {
		t.Fatalf("read the plan keys: %v", err)
	}
	if l.epoch, err = strconv.ParseInt(strings.TrimPrefix(string(resp.Kvs[0].Key), h.keys.PlanPrefix()), 10, 64); err != nil {
		t.Fatal(err)
	}
	ms, _, err := etcdx.Members(ctx, h.cli, h.keys)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range ms {
		l.addrs = append(l.addrs, m.Addr)
	}
	return l
}

// refused checks that an attack was refused with code and that the
// refusal names neither the job nor a revision the attacker should not
// learn from it.
func (h *hostile) refused(t *testing.T, what string, err error, code codes.Code, secrets ...int64) {
	t.Helper()
	if status.Code(err) != code {
		t.Errorf("%s: got %v, want %v", what, err, code)
		return
	}
	msg := status.Convert(err).Message()
	if strings.Contains(msg, h.job) {
		t.Errorf("%s: refusal names the job: %q", what, msg)
	}
	for _, s := range secrets {
		if strings.Contains(msg, strconv.FormatInt(s, 10)) {
			t.Errorf("%s: refusal echoes %d: %q", what, s, msg)
		}
	}
}

func dialAs(t *testing.T, addr string, c *tls.Config) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(addr, append(transport.Options{}.DialOptions(), tlsx.DialOption(c))...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// attack runs, between two steps of the real coordinator, every control
// call and tensor the attacker can forge, and checks each is refused.
func (h *hostile) attack(t *testing.T, step int64, evil string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	l := h.leak(t)
	t.Logf("attacking after step %d: leaked leader revision %d, epoch %d, workers %v", step, l.rev, l.epoch, l.addrs)
	at := func(rev int64) *pb.Fence { return &pb.Fence{Job: h.job, LeaderRev: rev, Epoch: l.epoch} }
	fakePlan := []byte(`{"stages":[{"first_layer":0,"layers":2}],"workers":[{"node":"x","stages":[0]}],"microbatches":[]}`)
	control := func(who string, c *tls.Config, rev int64, code codes.Code) {
		for _, addr := range l.addrs {
			w := pb.NewWorkerClient(dialAs(t, addr, c))
			_, err := w.Step(ctx, &pb.StepRequest{Fence: at(rev), Iteration: step + 1, ClipScale: 1, Lr: 1})
			h.refused(t, who+": Step", err, code, l.rev, rev)
			_, err = w.Configure(ctx, &pb.ConfigureRequest{Fence: &pb.Fence{Job: h.job, LeaderRev: rev, Epoch: l.epoch + 1},
				PlanJson: fakePlan, Worker: 0, Peers: []string{addr}})
			h.refused(t, who+": Configure with a fabricated plan", err, code, l.rev, rev)
			_, err = w.SaveCheckpoint(ctx, &pb.CheckpointRequest{Fence: at(rev), Dir: evil})
			h.refused(t, who+": SaveCheckpoint outside the job", err, code, l.rev, rev)
		}
	}
	// Whoever reaches the port, with or without a certificate: a fence
	// from the future, or a deposed leader's, is refused.
	var stolen *tls.Config
	if h.secure {
		stolen = h.load(t, "coordinator") // even the coordinator's own certificate
	}
	control("fence from the future (MaxInt64)", stolen, math.MaxInt64, codes.PermissionDenied)
	control("fence one above the leader", stolen, l.rev+1, codes.PermissionDenied)
	control("a deposed leader's fence", stolen, l.rev-1, codes.FailedPrecondition)
	for _, addr := range l.addrs {
		_, err := pb.NewWorkerClient(dialAs(t, addr, stolen)).Step(ctx, &pb.StepRequest{
			Fence: &pb.Fence{Job: "someone-else", LeaderRev: l.rev, Epoch: l.epoch}, Iteration: step + 1})
		h.refused(t, "another job's fence", err, codes.PermissionDenied, l.rev)
	}
	if !h.secure {
		return
	}
	// Under mutual TLS: no certificate is refused in the handshake; a
	// certificate of the CA without the coordinator role is refused even
	// at the leaked revision.
	for _, addr := range l.addrs {
		_, err := pb.NewWorkerClient(dialAs(t, addr, nil)).Step(ctx, &pb.StepRequest{Fence: at(l.rev), Iteration: step + 1})
		h.refused(t, "no certificate", err, codes.Unavailable, l.rev)
	}
	for _, who := range []string{"w0", "mallory", "probe"} {
		c := h.load(t, who)
		control(who+" at the leaked revision", c, l.rev, codes.PermissionDenied)
		for _, addr := range l.addrs {
			_, err := pb.NewWorkerClient(dialAs(t, addr, c)).Status(ctx, &pb.StatusRequest{})
			h.refused(t, who+": Status", err, codes.PermissionDenied, l.rev)
		}
	}
	// A valid worker certificate of the job sending tensors under the
	// plan's workers' names (plan worker 0 and 1 are w0 and w1, never
	// mallory).
	mallory := h.load(t, "mallory")
	for i, addr := range l.addrs {
		for from := range len(l.addrs) {
			hdr := &pb.TensorHeader{Fence: at(l.rev), Iteration: step + 1, Kind: pb.TensorKind_TENSOR_KIND_ACTIVATION,
				Stage: 1, From: int32(from), To: int32(i), Shape: []int32{2, 16, 16}}
			err := transport.Send(ctx, pb.NewPeerClient(dialAs(t, addr, mallory)), hdr, make([]byte, 4*2*16*16), 0)
			h.refused(t, fmt.Sprintf("mallory's tensor claiming worker %d", from), err, codes.PermissionDenied, l.rev)
		}
	}
}

// TestHostileControlCalls attacks a running job (real worker processes,
// real etcd, the coordinator in process) after its third step with every
// control call and tensor an attacker can forge from what etcd shows, in
// plaintext and under mutual TLS with role certificates. Every attack is
// refused (PermissionDenied, FailedPrecondition for a deposed leader's
// fence, the TLS handshake for a caller without a certificate) without
// naming the job or the leader revision, the workers count the refusals,
// and the job finishes with the losses and the parameters of an
// undisturbed run, bit for bit.
//
// Not refusable, and not attempted: in plaintext, a caller that sends the
// leaked revision and epoch is indistinguishable from the leader (an
// unauthenticated job); under TLS, the holder of the coordinator's
// certificate at the current revision is the coordinator.
func TestHostileControlCalls(t *testing.T) {
	for _, secure := range []bool{false, true} {
		name := "plaintext"
		if secure {
			name = "mutual-tls"
		}
		t.Run(name, func(t *testing.T) {
			const steps, attackAfter = 8, 3
			job := "hostile-authz-" + name
			names := []string{"w0", "w1"}
			h := newHostile(t, job, secure, names...)
			tc := tiny(2, 2)
			wantLosses, wantParams := reference(t, tc, h.corpus, steps)
			evil := filepath.Join(t.TempDir(), "evil")
			var losses []float64
			cfg := coordinator.Config{Simulator: sim.Simulator{}, Job: job, Endpoints: h.endpoints, TTL: ttl, Workers: 2, Schedule: "gpipe", Train: tc,
				Steps: steps, CorpusDir: h.corpus, OutDir: t.TempDir(), CheckpointDir: h.root, Checkpoint: true, RPCTimeout: 30 * time.Second,
				OnStep: func(r coordinator.StepReport) {
					losses = append(losses, r.Loss)
					if r.Step == attackAfter {
						h.attack(t, r.Step, evil)
					}
				}}
			if secure {
				cfg.TLS = h.load(t, "coordinator")
			}
			sum := runCoordinator(t, cfg, 2*time.Minute)
			h.checkCommits(t, steps)
			if len(losses) != steps {
				t.Fatalf("%d steps reported, want %d", len(losses), steps)
			}
			for i := range wantLosses {
				if math.Float64bits(losses[i]) != math.Float64bits(wantLosses[i]) {
					t.Fatalf("losses under attack differ from the undisturbed run at step %d:\n got %v\nwant %v", i+1, losses, wantLosses)
				}
			}
			checkParams(t, sum.Checkpoint, wantParams)
			if _, err := os.Stat(evil); !os.IsNotExist(err) {
				t.Errorf("a refused SaveCheckpoint touched %s: %v", evil, err)
			}
			for _, n := range names {
				if warned := strings.Contains(h.workers[n].log.String(), "UNAUTHENTICATED"); warned == secure {
					t.Errorf("worker %s warned of an unauthenticated job: %v, under TLS: %v", n, warned, secure)
				}
				s := metricstest.Scrape(t, h.metrics[n])
				var total float64
				for _, k := range []struct{ method, reason string }{
					{"fence", "future_leader"}, {"Step", "wrong_role"}, {"Step", "no_role"}, {"SendTensor", "wrong_sender"},
				} {
					v, _ := s.Get("stagecoach_worker_calls_denied_total", "method", k.method, "reason", k.reason)
					t.Logf("worker %s: denied %s (%s): %v", n, k.method, k.reason, v)
					total += v
				}
				// Per worker: 2 fence attacks x 3 calls; under TLS also
				// 3 stolen-role attackers' Steps (wrong_role x2, no_role)
				// and 2 forged tensors.
				want := 6.0
				if secure {
					want += 2 + 1 + 2
				}
				if total != want {
					t.Errorf("worker %s counted %v denials of those kinds, want %v", n, total, want)
				}
			}
		})
	}
}
