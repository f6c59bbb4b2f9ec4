package coordinator_test

import (
	"context"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/client/v3/concurrency"

	"stagecoach/coordinator"
	"stagecoach/data"
	"stagecoach/internal/etcdx"
	"stagecoach/model"
	"stagecoach/sim"
	"stagecoach/worker"
)

// tinyTrain is a model small enough for the race detector on two cores.
func tinyTrain(layers int) model.TrainConfig {
	return model.TrainConfig{
		Model:        model.Config{Layers: layers, Dim: 16, Heads: 2, Ctx: 16, Seed: 7},
		Microbatches: 4, MicrobatchSize: 2,
	}
}

// writeCorpus writes a small deterministic text tree with a validation
// split.
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

// cluster is an embedded etcd plus n in-process workers serving real gRPC
// on loopback, each registered in etcd under its own lease. The workers'
// checkpoint root is root, the coordinators' CheckpointDir.
type cluster struct {
	root      string
	endpoints []string
	workers   []*worker.Server
	sessions  []*concurrency.Session
}

func startCluster(t *testing.T, job string, n int) *cluster {
	t.Helper()
	return startClusterWith(t, job, n, nil)
}

// startClusterWith is startCluster; tune, when set, adjusts worker i's
// config before it starts.
func startClusterWith(t *testing.T, job string, n int, tune func(i int, c *worker.Config)) *cluster {
	t.Helper()
	ctx := context.Background()
	e, err := etcdx.StartEmbedded(ctx, etcdx.EmbedConfig{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	c := &cluster{endpoints: e.Endpoints(), root: t.TempDir()}
	cli, err := etcdx.Dial(ctx, c.endpoints, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	keys, _ := etcdx.NewKeys(job)
	for i := range n {
		name := fmt.Sprintf("w%d", i)
		wc := worker.Config{Name: name, Listen: "127.0.0.1:0", Job: job, DataDir: t.TempDir(),
			CheckpointRoot: c.root, Logf: func(string, ...any) {}}
		if tune != nil {
			tune(i, &wc)
		}
		w, err := worker.New(wc)
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
		c.workers = append(c.workers, w)
		c.sessions = append(c.sessions, s)
	}
	return c
}

// reference runs the single-process trainer on the same corpus, seed and
// microbatch split, returning its per-step losses and final parameters.
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

func TestPipelinesAreBitIdenticalToSingleProcess(t *testing.T) {
	corpus := writeCorpus(t)
	const steps = 3
	for _, tt := range []struct {
		schedule        string
		workers, stages int
		layers          int
		// Replicated stages (4 workers, 2 stages) are bit-identical too:
		// they reduce in microbatch order (worker/ordered.go).
	}{{"gpipe", 2, 2, 3}, {"gpipe", 3, 3, 3}, {"1f1b", 3, 3, 3}, {"gpipe", 4, 2, 3},
		{"1f1b", 4, 2, 3}, {"zb-h1", 2, 2, 3}, {"interleaved", 2, 2, 4},
		// V placement (head and loss on worker 0) and overlapped pairs.
		{"zb-v", 2, 2, 4}, {"dualpipe-v", 2, 2, 4}} {
		t.Run(fmt.Sprintf("%s/%dworkers/%dstages", tt.schedule, tt.workers, tt.stages), func(t *testing.T) {
			job := fmt.Sprintf("exact-%s-%d-%d", tt.schedule, tt.workers, tt.stages)
			tc := tinyTrain(tt.layers)
			wantLoss, wantParams := reference(t, tc, corpus, steps)
			cl := startCluster(t, job, tt.workers)
			out := t.TempDir()
			var got []float64
			co, err := coordinator.New(coordinator.Config{Simulator: sim.Simulator{},
				Job: job, Endpoints: cl.endpoints, TTL: 2, Workers: tt.workers, Stages: tt.stages, Schedule: tt.schedule,
				Train: tc, Steps: steps, CorpusDir: corpus, OutDir: out, CheckpointDir: cl.root, Checkpoint: true,
				OnStep: func(r coordinator.StepReport) { got = append(got, r.Loss) },
			})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			sum, err := co.Run(ctx)
			if err != nil {
				t.Fatal(err)
			}
			for i := range wantLoss {
				if i >= len(got) {
					t.Fatalf("%d losses reported, want %d", len(got), len(wantLoss))
				}
				if math.Float64bits(got[i]) != math.Float64bits(wantLoss[i]) {
					t.Fatalf("losses differ from the single-process trainer:\n got %v\nwant %v", got, wantLoss)
				}
			}
			checkParams(t, sum.Checkpoint, wantParams)
			checkCommits(t, cl.endpoints, job, steps)
			if sum.Measured == nil || len(sum.Measured.Timeline) == 0 {
				t.Errorf("no measured timeline")
			}
			if sum.Simulated == nil {
				t.Errorf("no calibrated simulation: %s", sum.SimError)
			}
		})
	}
}

// checkParams compares every parameter and optimizer moment the workers
// saved with the reference, bit for bit.
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
	same := func(a, b []float32) bool {
		if len(a) != len(b) {
			return false
		}
		for i := range a {
			if math.Float32bits(a[i]) != math.Float32bits(b[i]) {
				return false
			}
		}
		return true
	}
	for _, st := range want {
		for _, x := range []struct {
			name string
			v    []float32
		}{{st.T.Name, st.T.W}, {"optim.m." + st.T.Name, st.M}, {"optim.v." + st.T.Name, st.V}} {
			g, ok := got[x.name]
			if !ok {
				t.Errorf("checkpoint lacks %s", x.name)
				continue
			}
			if !same(g, x.v) {
				t.Errorf("%s differs from the single-process trainer", x.name)
			}
		}
	}
}

// checkCommits reads the committed steps back from etcd: 1..steps, no gap
// or duplicate.
func checkCommits(t *testing.T, endpoints []string, job string, steps int) {
	t.Helper()
	ctx := context.Background()
	cli, err := etcdx.Dial(ctx, endpoints, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	keys, _ := etcdx.NewKeys(job)
	cs, err := etcdx.Commits(ctx, cli, keys)
	if err != nil {
		t.Fatal(err)
	}
	if err := etcdx.CheckSequence(cs); err != nil || len(cs) != steps {
		t.Fatalf("committed sequence %+v: %v (want steps 1..%d)", cs, err, steps)
	}
}
