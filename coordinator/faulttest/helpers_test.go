package faulttest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"stagecoach/coordinator"
	"stagecoach/data"
	"stagecoach/internal/etcdx"
	"stagecoach/model"
)

// bin is the stagecoach binary built once by TestMain.
var bin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "stagecoach-faulttest-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	bin = filepath.Join(dir, "stagecoach")
	cmd := exec.Command("go", "build", "-o", bin, "stagecoach/cmd/stagecoach")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		fmt.Fprintf(os.Stderr, "faulttest: build stagecoach: %v\n", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// ttl is the lease TTL of every process (etcd's minimum).
const ttl = 2

// syncBuffer is a log sink shared by a process and the test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// proc is one child process; Cleanup kills it by its own pid.
type proc struct {
	name string
	cmd  *exec.Cmd
	log  *syncBuffer
	done chan struct{}
	err  error
}

func start(t *testing.T, name string, args ...string) *proc {
	t.Helper()
	return startEnv(t, name, nil, args...)
}

// startEnv is start with extra environment variables (KEY=value).
func startEnv(t *testing.T, name string, env []string, args ...string) *proc {
	t.Helper()
	p := &proc{name: name, log: &syncBuffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(bin, args...)
	if env != nil {
		p.cmd.Env = append(os.Environ(), env...)
	}
	p.cmd.Stdout, p.cmd.Stderr = p.log, p.log
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.signal(syscall.SIGCONT) // a stopped process cannot die of SIGKILL until continued on some kernels
		p.signal(syscall.SIGKILL)
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			t.Errorf("%s (pid %d) did not exit after SIGKILL", name, p.cmd.Process.Pid)
		}
		if t.Failed() {
			t.Logf("--- log of %s ---\n%s", name, tail(p.log.String(), 4000))
		}
	})
	return p
}

func (p *proc) signal(sig syscall.Signal) {
	select {
	case <-p.done:
	default:
		_ = p.cmd.Process.Signal(sig)
	}
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "..." + s[len(s)-n:]
}

// env is an embedded etcd, a corpus and an etcd client for one job.
type env struct {
	job       string
	endpoints []string
	cli       *clientv3.Client
	keys      etcdx.Keys
	corpus    string
	// root is the workers' checkpoint root and the coordinators'
	// checkpoint directory.
	root    string
	workers map[string]*proc
	// workerTTL, when set before the workers start, replaces ttl as
	// their lease TTL.
	workerTTL int
}

func newEnv(t *testing.T, job string) *env {
	t.Helper()
	ctx := context.Background()
	e, err := etcdx.StartEmbedded(ctx, etcdx.EmbedConfig{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	cli, err := etcdx.Dial(ctx, e.Endpoints(), 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	keys, err := etcdx.NewKeys(job)
	if err != nil {
		t.Fatal(err)
	}
	return &env{job: job, endpoints: e.Endpoints(), cli: cli, keys: keys, corpus: writeCorpus(t), root: t.TempDir(), workers: map[string]*proc{}}
}

// startWorkers runs `stagecoach worker` processes named names and waits
// (bounded) until all are registered.
func (e *env) startWorkers(t *testing.T, names ...string) {
	t.Helper()
	e.startWorkersEnv(t, nil, names...)
}

// startWorkersEnv is startWorkers with extra environment variables.
func (e *env) startWorkersEnv(t *testing.T, env []string, names ...string) {
	t.Helper()
	for _, n := range names {
		e.workers[n] = startEnv(t, "worker "+n, env, "worker", "--etcd", strings.Join(e.endpoints, ","), "--job", e.job,
			"--name", n, "--ttl", fmt.Sprint(e.workerLease()), "--data-dir", t.TempDir(), "--checkpoint-root", e.root)
	}
	e.waitRegistered(t, 30*time.Second, names...)
}

// workerLease is the lease TTL the env's workers start with: workerTTL
// when set, else ttl.
func (e *env) workerLease() int {
	if e.workerTTL != 0 {
		return e.workerTTL
	}
	return ttl
}

// waitRegistered waits until every name is registered; it returns their
// leases.
func (e *env) waitRegistered(t *testing.T, d time.Duration, names ...string) map[string]int64 {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		ms, _, err := etcdx.Members(context.Background(), e.cli, e.keys)
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]int64{}
		for _, m := range ms {
			got[m.Name] = m.Lease
		}
		ok := true
		for _, n := range names {
			if _, in := got[n]; !in {
				ok = false
			}
		}
		if ok {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("workers %v not all registered after %v (have %v)", names, d, got)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// checkCommits reads the committed steps: 1..steps, no gap or duplicate.
func (e *env) checkCommits(t *testing.T, steps int) []etcdx.Commit {
	t.Helper()
	cs, err := etcdx.Commits(context.Background(), e.cli, e.keys)
	if err != nil {
		t.Fatal(err)
	}
	if err := etcdx.CheckSequence(cs); err != nil || len(cs) != steps {
		t.Fatalf("committed sequence of %d steps: %v (want steps 1..%d)", len(cs), err, steps)
	}
	return cs
}

// writeCorpus writes a small deterministic text tree.
func writeCorpus(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for i := range 40 {
		var b strings.Builder
		for j := range 30 {
			fmt.Fprintf(&b, "func f%d_%d(x int) int { return x*%d + %d } // line %d\n", i, j, i+1, j, j)
		}
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("f%02d.go", i)), []byte(b.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// tiny is the model of every test: small enough that a step takes
// milliseconds, big enough to have a few layers to split.
func tiny(layers, microbatches int) model.TrainConfig {
	return model.TrainConfig{
		Model:        model.Config{Layers: layers, Dim: 16, Heads: 2, Ctx: 16, Seed: 7},
		Microbatches: microbatches, MicrobatchSize: 2,
		Optim: model.OptimConfig{Kind: "adamw"},
	}
}

// reference runs the single-process trainer: the fault-free run.
func reference(t *testing.T, tc model.TrainConfig, corpusDir string, steps int) ([]float64, []model.ParamState) {
	t.Helper()
	tc.Optim.TotalSteps = steps
	tr, err := model.NewTrainer(tc)
	if err != nil {
		t.Fatal(err)
	}
	corpus, err := data.Load(corpusDir, data.Options{})
	if err != nil {
		t.Fatal(err)
	}
	s := data.NewSampler(corpus.Train, tr.Cfg.Model.Seed)
	ctx := tr.Cfg.Model.Ctx
	var losses []float64
	for range steps {
		r, err := tr.TrainStep(func(dst []int32) error { return s.Fill(dst, ctx+1) })
		if err != nil {
			t.Fatal(err)
		}
		losses = append(losses, r.Loss)
	}
	return losses, tr.States()
}

// checkParams compares a checkpoint directory's shards (weights and
// optimizer moments) with the reference, bit for bit.
func checkParams(t *testing.T, dir string, want []model.ParamState) {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "*.safetensors"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no checkpoint files in %s (%v)", dir, err)
	}
	got := map[string][]float32{}
	for _, f := range files {
		ts, _, err := model.ReadSafetensorsFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, st := range ts {
			got[st.Name] = st.Data
		}
	}
	bad := 0
	for _, st := range want {
		for _, x := range []struct {
			name string
			v    []float32
		}{{st.T.Name, st.T.W}, {"optim.m." + st.T.Name, st.M}, {"optim.v." + st.T.Name, st.V}} {
			g, ok := got[x.name]
			if !ok || len(g) != len(x.v) {
				t.Errorf("checkpoint lacks %s", x.name)
				bad++
				continue
			}
			for i := range g {
				if math.Float32bits(g[i]) != math.Float32bits(x.v[i]) {
					t.Errorf("%s differs from the fault-free run at %d", x.name, i)
					bad++
					break
				}
			}
		}
	}
	if bad == 0 {
		t.Logf("all %d tensors (weights and optimizer moments) equal the fault-free run bit for bit", 3*len(want))
	}
}

func lastKey() []clientv3.OpOption { return clientv3.WithLastKey() }

func jsonUnmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }

// countStale counts a worker log's lines about refused messages of an
// older epoch or a deposed leader.
func countStale(log string) int {
	n := 0
	for _, l := range strings.Split(log, "\n") {
		if strings.Contains(l, "older plan epoch") || strings.Contains(l, "deposed leader") {
			n++
		}
	}
	return n
}

// wanLatencyMS is the one-way latency of every emulated link between two
// workers in the fault tests that run over slow links.
const wanLatencyMS = 10

// slowLinks is a cluster cost model with each named worker in a region of
// its own and every two regions joined by a wanLatencyMS, 50 MiB/s link.
// Given as coordinator.Config.Cluster, the workers emulate these links
// (the transport's shaping holds every message for its hop time), so the
// faults strike a pipeline running over slow links, as across regions.
func slowLinks(names ...string) []byte {
	var b strings.Builder
	b.WriteString("name: faulttest-wan\ncompute:\n  layer_forward_s: 0.001\n  backward_ratio: 2\n  activation_bytes_per_sample: 2048\n  gradient_bytes_per_layer: 20000\nnodes:\n")
	for i, n := range names {
		fmt.Fprintf(&b, "  - {name: %s, region: r%d}\n", n, i)
	}
	fmt.Fprintf(&b, "default_link: {latency_ms: %d, bandwidth_gib_s: 0.05}\nlocal_link: {latency_ms: 0.1, bandwidth_gib_s: 10}\n", wanLatencyMS)
	return []byte(b.String())
}

// checkSlowLinks checks that every committed step paid the emulated links:
// a pipeline of two or more stages sends at least one activation forward
// and one gradient back, each held for wanLatencyMS.
func checkSlowLinks(t *testing.T, sum *coordinator.Summary) {
	t.Helper()
	floor := 2 * wanLatencyMS * time.Millisecond
	for _, st := range sum.Steps {
		if d := time.Duration(st.ComputeS * float64(time.Second)); d < floor {
			t.Errorf("step %d ran its programs in %v, under the %v two emulated hops take: links not shaped", st.Step, d, floor)
		}
	}
}
