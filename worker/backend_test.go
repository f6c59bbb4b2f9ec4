package worker_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"stagecoach/compute"
	"stagecoach/compute/builtin"
	"stagecoach/model"
	pb "stagecoach/proto"
	"stagecoach/scheduler"
	"stagecoach/worker"
	"stagecoach/worker/workertest"
)

// recordingBackend wraps the built-in backend under another name,
// counting every call its stages receive; fail, when set, may make a
// call fail instead (before it reaches the model).
type recordingBackend struct {
	name  string
	split bool // declare Caps.SplitBackward
	mu    sync.Mutex
	calls map[string]int
	fail  func(op string, spec compute.ShardSpec, mb int) error
	// mangle, when set, changes what stages describe.
	mangle func(d *compute.Description)
}

func newRecording(name string) *recordingBackend {
	return &recordingBackend{name: name, calls: map[string]int{}}
}

func (b *recordingBackend) Name() string { return b.name }
func (b *recordingBackend) Close() error { return nil }

func (b *recordingBackend) Load(ctx context.Context, spec compute.LoadSpec) (compute.Stage, error) {
	if err := b.call("Load", spec.Shard, -1); err != nil {
		return nil, err
	}
	st, err := builtin.Backend{}.Load(ctx, spec)
	if err != nil {
		return nil, err
	}
	return &recordingStage{Stage: st, b: b, spec: spec.Shard}, nil
}

func (b *recordingBackend) call(op string, spec compute.ShardSpec, mb int) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.calls[op]++
	if b.fail != nil {
		return b.fail(op, spec, mb)
	}
	return nil
}

func (b *recordingBackend) count(op string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.calls[op]
}

type recordingStage struct {
	compute.Stage
	b    *recordingBackend
	spec compute.ShardSpec
}

func (s *recordingStage) Describe() compute.Description {
	_ = s.b.call("Describe", s.spec, -1)
	d := s.Stage.Describe()
	d.Backend = s.b.name
	d.Caps.SplitBackward = s.b.split
	if s.b.mangle != nil {
		s.b.mangle(&d)
	}
	return d
}

func (s *recordingStage) ZeroGrad() error {
	if err := s.b.call("ZeroGrad", s.spec, -1); err != nil {
		return err
	}
	return s.Stage.ZeroGrad()
}

func (s *recordingStage) Forward(mb int, x *compute.Tensor) (*compute.Tensor, error) {
	if err := s.b.call("Forward", s.spec, mb); err != nil {
		return nil, err
	}
	return s.Stage.Forward(mb, x)
}

func (s *recordingStage) Loss(mb int, h *compute.Tensor, tg []int32) (float64, *compute.Tensor, error) {
	if err := s.b.call("Loss", s.spec, mb); err != nil {
		return 0, nil, err
	}
	return s.Stage.Loss(mb, h, tg)
}

func (s *recordingStage) Backward(mb int, g *compute.Tensor) (*compute.Tensor, error) {
	if err := s.b.call("Backward", s.spec, mb); err != nil {
		return nil, err
	}
	return s.Stage.Backward(mb, g)
}

func (s *recordingStage) BackwardInput(mb int, g *compute.Tensor) (*compute.Tensor, error) {
	if err := s.b.call("BackwardInput", s.spec, mb); err != nil {
		return nil, err
	}
	return s.Stage.BackwardInput(mb, g)
}

func (s *recordingStage) BackwardWeight(mb int) error {
	if err := s.b.call("BackwardWeight", s.spec, mb); err != nil {
		return err
	}
	return s.Stage.BackwardWeight(mb)
}

func (s *recordingStage) SumSquares() ([]float64, error) {
	if err := s.b.call("SumSquares", s.spec, -1); err != nil {
		return nil, err
	}
	return s.Stage.SumSquares()
}

func (s *recordingStage) Step(step int, lr float64, clip float32) error {
	if err := s.b.call("Step", s.spec, -1); err != nil {
		return err
	}
	return s.Stage.Step(step, lr, clip)
}

func (s *recordingStage) State() ([]compute.ParamState, error) {
	if err := s.b.call("State", s.spec, -1); err != nil {
		return nil, err
	}
	return s.Stage.State()
}

func (s *recordingStage) Close() error {
	_ = s.b.call("Close", s.spec, -1)
	return s.Stage.Close()
}

// backendJob starts one worker per plan worker, each computing through
// its own recording backend, and configures them for cfg.
func backendJob(t *testing.T, plan *scheduler.Plan, cfg model.TrainConfig, tune func(b *recordingBackend)) (*workertest.Cluster, *workertest.Driver, []*recordingBackend) {
	t.Helper()
	bs := make([]*recordingBackend, len(plan.Workers))
	for i := range bs {
		bs[i] = newRecording(fmt.Sprintf("rec%d", i))
		if tune != nil {
			tune(bs[i])
		}
	}
	c := workertest.Start(t, len(plan.Workers), testJob, func(i int, wc *worker.Config) { wc.Backend = bs[i] })
	d := &workertest.Driver{Clients: workertest.Dial(t, c.Addrs), Peers: c.Addrs, Plan: plan, Train: cfg,
		Fence: &pb.Fence{Job: testJob, LeaderRev: 7, Epoch: 1}}
	if err := d.Configure(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	return c, d, bs
}

// TestWorkerComputesThroughItsBackend drives a small job through
// recording backends: every computation reaches the backend each worker
// was given, as often as the plan says, and the results are still the
// single-process trainer's bit for bit (the backend declaring a split
// backward or not). A reconfigure that rebuilds the stages loads new ones
// and closes the old.
func TestWorkerComputesThroughItsBackend(t *testing.T) {
	for _, sched := range []string{"gpipe", "zb-h1"} {
		for _, split := range []bool{false, true} {
			if sched == "gpipe" && split {
				continue // gpipe has no split backward to take
			}
			t.Run(fmt.Sprintf("%s/split=%v", sched, split), func(t *testing.T) {
				const stages, mbs, size, layers, steps = 2, 4, 1, 4, 2
				cfg := trainConfig(layers, mbs, size)
				ref, err := model.NewTrainer(cfg)
				if err != nil {
					t.Fatal(err)
				}
				plan, err := scheduler.Generate(sched, scheduler.Spec{Stages: stages, Replicas: 1, Microbatches: mbs, Layers: layers, Samples: size})
				if err != nil {
					t.Fatal(err)
				}
				c, d, bs := backendJob(t, plan, ref.Cfg, func(b *recordingBackend) { b.split = split })
				ctx := context.Background()
				for step := 1; step <= steps; step++ {
					got, want := stepBoth(t, ctx, d, ref, 11, step, mbs, size)
					if math.Float64bits(got.Loss) != math.Float64bits(want.Loss) || math.Float64bits(got.GradNorm) != math.Float64bits(want.GradNorm) {
						t.Errorf("step %d: loss %v norm %v, trainer %v %v", step, got.Loss, got.GradNorm, want.Loss, want.GradNorm)
					}
				}
				head := plan.StageWorkers()[plan.HeadStage][0]
				for w, b := range bs {
					want := map[string]int{"Load": 1, "ZeroGrad": steps, "Forward": mbs * steps, "SumSquares": steps, "Step": steps}
					if w == head {
						want["Loss"] = mbs * steps
					}
					switch {
					case sched == "gpipe":
						want["Backward"] = mbs * steps
					case split:
						want["BackwardInput"], want["BackwardWeight"] = mbs*steps, mbs*steps
					default:
						// Without the capability BackwardInput is the
						// whole backward and BackwardWeight is skipped.
						want["Backward"] = mbs * steps
					}
					for _, op := range []string{"Load", "ZeroGrad", "Forward", "Loss", "Backward", "BackwardInput", "BackwardWeight", "SumSquares", "Step", "Close"} {
						if got := b.count(op); got != want[op] {
							t.Errorf("worker %d: %d calls of %s, want %d", w, got, op, want[op])
						}
					}
				}
				saveShards(t, d, "ckpt", steps)
				for w, b := range bs {
					if n := b.count("State"); n != 1 {
						t.Errorf("worker %d: %d calls of State for one checkpoint", w, n)
					}
				}

				// A fresh Configure rebuilds every stage: loaded anew,
				// the old ones closed.
				var pj bytes.Buffer
				if err := scheduler.Encode(&pj, plan); err != nil {
					t.Fatal(err)
				}
				mj, _ := json.Marshal(ref.Cfg)
				d.Fence = &pb.Fence{Job: testJob, LeaderRev: 7, Epoch: 2}
				for i, cl := range d.Clients {
					if _, err := cl.Configure(ctx, &pb.ConfigureRequest{Fence: d.Fence, PlanJson: pj.Bytes(), Worker: int32(i), Peers: d.Peers, ModelJson: mj, Fresh: true}); err != nil {
						t.Fatal(err)
					}
					if l, cl := bs[i].count("Load"), bs[i].count("Close"); l != 2 || cl != 1 {
						t.Errorf("worker %d after a fresh Configure: %d loads, %d closes; want 2 and 1", i, l, cl)
					}
				}
				c.Servers[0].Stop(time.Second)
				if n := bs[0].count("Close"); n != 2 {
					t.Errorf("worker 0 stopped: %d closes, want 2", n)
				}
			})
		}
	}
}

// TestConfigureChecksTheBackendNamed: model_json may name the backend the
// job needs; a worker computing with another refuses, naming both.
func TestConfigureChecksTheBackendNamed(t *testing.T) {
	plan, err := scheduler.Generate("gpipe", scheduler.Spec{Stages: 1, Replicas: 1, Microbatches: 1, Layers: 2, Samples: 1})
	if err != nil {
		t.Fatal(err)
	}
	cfg := trainConfig(2, 1, 1)
	c, d, _ := backendJob(t, plan, cfg, nil)
	var pj bytes.Buffer
	if err := scheduler.Encode(&pj, plan); err != nil {
		t.Fatal(err)
	}
	configure := func(backend string) error {
		mj, _ := json.Marshal(cfg)
		if backend != "" {
			mj = append(mj[:len(mj)-1], fmt.Sprintf(",%q:%q}", "backend", backend)...)
		}
		_, err := d.Clients[0].Configure(context.Background(), &pb.ConfigureRequest{Fence: d.Fence, PlanJson: pj.Bytes(), Peers: c.Addrs, ModelJson: mj})
		return err
	}
	err = configure("torch")
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), `"torch"`) || !strings.Contains(err.Error(), `"rec0"`) {
		t.Fatalf("configure for backend torch on a rec0 worker: %v, want InvalidArgument naming both", err)
	}
	if err := configure("rec0"); err != nil {
		t.Fatalf("configure naming the worker's own backend: %v", err)
	}
}

// TestBackendFailureFailsTheIteration: the backend fails in the middle of
// an iteration (stage 0's last backward). The iteration fails with
// Aborted, as when a peer is lost, naming the backend; the worker reports
// itself unhealthy (Status Unavailable, health NOT_SERVING), so a
// coordinator counts it lost. Retried under a new epoch, the iteration
// succeeds with the trainer's exact numbers (nothing of the failed
// attempt survives) and the worker is healthy again.
func TestBackendFailureFailsTheIteration(t *testing.T) {
	const mbs, size, layers = 3, 1, 4
	cfg := trainConfig(layers, mbs, size)
	ref, err := model.NewTrainer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	plan, err := scheduler.Generate("gpipe", scheduler.Spec{Stages: 2, Replicas: 1, Microbatches: mbs, Layers: layers, Samples: size})
	if err != nil {
		t.Fatal(err)
	}
	c, d, bs := backendJob(t, plan, ref.Cfg, nil)
	failed := false
	bs[0].fail = func(op string, spec compute.ShardSpec, mb int) error {
		if op == "Backward" && mb == mbs-1 && !failed {
			failed = true
			return fmt.Errorf("%w: backend process exited", compute.ErrBackend)
		}
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	w := stepWindows(11, 1, mbs, size, ref.Cfg.Model.Ctx, ref.Pipe.Cfg.Vocab)
	_, err = d.Iterate(ctx, 1, w)
	if !failed {
		t.Fatal("the failure was never injected")
	}
	if status.Code(errors.Unwrap(err)) != codes.Aborted || !strings.Contains(err.Error(), "rec0") || !strings.Contains(err.Error(), "backend process exited") {
		t.Fatalf("iteration with a failing backend: %v; want Aborted naming backend rec0 and its failure", err)
	}

	conn, err := grpc.NewClient(c.Addrs[0], grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	hc := healthpb.NewHealthClient(conn)
	healthIs := func(want healthpb.HealthCheckResponse_ServingStatus) {
		t.Helper()
		r, err := hc.Check(ctx, &healthpb.HealthCheckRequest{})
		if err != nil || r.GetStatus() != want {
			t.Fatalf("health: %v %v, want %v", r.GetStatus(), err, want)
		}
	}
	_, err = d.Clients[0].Status(ctx, &pb.StatusRequest{})
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "rec0") {
		t.Fatalf("status after the backend failed: %v, want Unavailable naming the backend", err)
	}
	healthIs(healthpb.HealthCheckResponse_NOT_SERVING)
	if _, err := d.Clients[1].Status(ctx, &pb.StatusRequest{}); err != nil {
		t.Fatalf("status of the worker whose backend did not fail: %v", err)
	}

	// The coordinator's retry: a new epoch, the same iteration.
	d.Fence = &pb.Fence{Job: testJob, LeaderRev: 7, Epoch: 2}
	if err := d.Configure(ctx, nil); err != nil {
		t.Fatal(err)
	}
	got, want := stepBoth(t, ctx, d, ref, 11, 1, mbs, size)
	if math.Float64bits(got.Loss) != math.Float64bits(want.Loss) || math.Float64bits(got.GradNorm) != math.Float64bits(want.GradNorm) {
		t.Errorf("retried iteration: loss %v norm %v, trainer %v %v", got.Loss, got.GradNorm, want.Loss, want.GradNorm)
	}
	if _, err := d.Clients[0].Status(ctx, &pb.StatusRequest{}); err != nil {
		t.Fatalf("status after a successful iteration: %v", err)
	}
	healthIs(healthpb.HealthCheckResponse_SERVING)
}

// TestImpossibleDescriptionIsABackendFailure: a backend describing a
// stage the model cannot have (hidden states of another width, more
// parameters than the model) fails the Configure as a backend failure,
// before the worker sizes anything by it.
func TestImpossibleDescriptionIsABackendFailure(t *testing.T) {
	plan, err := scheduler.Generate("gpipe", scheduler.Spec{Stages: 1, Replicas: 1, Microbatches: 1, Layers: 2, Samples: 1})
	if err != nil {
		t.Fatal(err)
	}
	cfg := trainConfig(2, 1, 1)
	mj, _ := json.Marshal(cfg)
	var pj bytes.Buffer
	if err := scheduler.Encode(&pj, plan); err != nil {
		t.Fatal(err)
	}
	for name, mangle := range map[string]func(d *compute.Description){
		"width":  func(d *compute.Description) { d.Width++ },
		"huge":   func(d *compute.Description) { d.Params[0].Shape = []int{1 << 40, 1 << 40} },
		"excess": func(d *compute.Description) { d.Params = append(d.Params, d.Params...) },
	} {
		t.Run(name, func(t *testing.T) {
			b := newRecording("rec0")
			b.mangle = mangle
			c := workertest.Start(t, 1, testJob, func(_ int, wc *worker.Config) { wc.Backend = b })
			cl := workertest.Dial(t, c.Addrs)[0]
			_, err := cl.Configure(context.Background(), &pb.ConfigureRequest{Fence: &pb.Fence{Job: testJob, LeaderRev: 7, Epoch: 1},
				PlanJson: pj.Bytes(), Peers: c.Addrs, ModelJson: mj})
			if status.Code(err) != codes.Aborted || !strings.Contains(err.Error(), "backend rec0") {
				t.Fatalf("configure with an impossible description: %v, want Aborted naming the backend", err)
			}
			if n := b.count("Close"); n != 1 {
				t.Errorf("the refused stage was closed %d times, want once", n)
			}
		})
	}
}
