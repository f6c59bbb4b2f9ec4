package worker_test

import (
	"context"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"stagecoach/internal/transport"
	"stagecoach/model"
	pb "stagecoach/proto"
	"stagecoach/scheduler"
	"stagecoach/worker/workertest"
)

// trainPlan runs steps of training of plan on real workers (gRPC over
// loopback), with optional link emulation, and returns the cluster, the
// driver and every step's result.
func trainPlan(t *testing.T, plan *scheduler.Plan, cfg model.TrainConfig, steps int, shaping string) (*workertest.Cluster, *workertest.Driver, []*workertest.Result) {
	t.Helper()
	c := workertest.Start(t, len(plan.Workers), testJob, nil)
	d := &workertest.Driver{Clients: workertest.Dial(t, c.Addrs), Peers: c.Addrs, Plan: plan, Train: cfg,
		Fence: &pb.Fence{Job: testJob, LeaderRev: 3, Epoch: 1}}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var yaml []byte
	if shaping != "" {
		yaml = []byte(shaping)
	}
	if err := d.Configure(ctx, yaml); err != nil {
		t.Fatal(err)
	}
	var out []*workertest.Result
	for step := 1; step <= steps; step++ {
		w := stepWindows(11, step, len(plan.Microbatches), plan.Microbatches[0].Samples, cfg.Model.Ctx, 256)
		res, err := d.Iterate(ctx, int64(step), w)
		if err != nil {
			t.Fatalf("step %d: %v", step, err)
		}
		out = append(out, res)
	}
	return c, d, out
}

// withAllReduce is plan with every stage's all-reduce set to alg.
func withAllReduce(t *testing.T, su setup, alg string) *scheduler.Plan {
	t.Helper()
	p, err := scheduler.Generate(su.schedule, scheduler.Spec{Stages: su.stages, Replicas: su.replicas, Microbatches: su.mbs, Layers: su.layers, Samples: su.size})
	if err != nil {
		t.Fatal(err)
	}
	for s := range p.Stages {
		p.Stages[s].AllReduce = alg
	}
	if err := scheduler.Validate(p); err != nil {
		t.Fatal(err)
	}
	return p
}

// The direct all-reduce leaves a stage's replicas bit-identical, agrees
// with the ring to float32 rounding (bit for bit with two replicas, where
// both compute a + b), and with the single-process trainer as closely as
// the ring does.
func TestDirectAllReduceMatchesRing(t *testing.T) {
	for _, su := range []setup{
		{schedule: "gpipe", stages: 2, replicas: 2, mbs: 4, size: 2, layers: 4},
		{schedule: "1f1b", stages: 2, replicas: 3, mbs: 6, size: 1, layers: 4},
		{schedule: "gpipe", stages: 1, replicas: 4, mbs: 8, size: 1, layers: 2},
	} {
		t.Run(su.String(), func(t *testing.T) {
			const steps = 3
			cfg := trainConfig(su.layers, su.mbs, su.size)
			ref, err := model.NewTrainer(cfg)
			if err != nil {
				t.Fatal(err)
			}
			var want []model.StepResult
			for step := 1; step <= steps; step++ {
				r, err := ref.TrainStep(feed(stepWindows(11, step, su.mbs, su.size, cfg.Model.Ctx, ref.Pipe.Cfg.Vocab)))
				if err != nil {
					t.Fatal(err)
				}
				want = append(want, r)
			}
			cd, dd, direct := trainPlan(t, withAllReduce(t, su, scheduler.AllReduceDirect), ref.Cfg, steps, "")
			cr, dr, ring := trainPlan(t, withAllReduce(t, su, scheduler.AllReduceRing), ref.Cfg, steps, "")
			for i := range steps {
				if rel := math.Abs(direct[i].Loss-want[i].Loss) / math.Abs(want[i].Loss); rel > replicaLossRelTol {
					t.Errorf("step %d: loss %v, trainer %v (rel %g)", i+1, direct[i].Loss, want[i].Loss, rel)
				}
				if rel := math.Abs(direct[i].GradNorm-ring[i].GradNorm) / ring[i].GradNorm; rel > replicaLossRelTol {
					t.Errorf("step %d: grad norm %v, ring %v (rel %g)", i+1, direct[i].GradNorm, ring[i].GradNorm, rel)
				}
			}
			got, viaRing, trainer := checkpointParams(t, cd, dd, steps), checkpointParams(t, cr, dr, steps), referenceParams(ref)
			sameAcrossReplicas(t, cd, dd, steps)
			var toRing, toTrainer float64
			differ := 0
			for name, w := range trainer {
				if strings.HasPrefix(name, "optim.") {
					continue
				}
				g, r := got[name], viaRing[name]
				if len(g) != len(w) || len(r) != len(w) {
					t.Fatalf("%s: %d and %d elements, want %d", name, len(g), len(r), len(w))
				}
				for i := range w {
					toRing = max(toRing, math.Abs(float64(g[i])-float64(r[i])))
					toTrainer = max(toTrainer, math.Abs(float64(g[i])-float64(w[i])))
					if math.Float32bits(g[i]) != math.Float32bits(r[i]) {
						differ++
					}
				}
			}
			t.Logf("after %d steps: largest weight difference to the ring %g (%d weights differ in their bits), to the trainer %g", steps, toRing, differ, toTrainer)
			if toRing > replicaParamAbsTol || toTrainer > replicaParamAbsTol {
				t.Errorf("weights differ from the ring's by %g, from the trainer's by %g (> %g)", toRing, toTrainer, replicaParamAbsTol)
			}
			if su.replicas == 2 && differ > 0 {
				t.Errorf("with two replicas direct and ring both compute a + b, yet %d weights differ", differ)
			}
		})
	}
}

// fourRegions puts replicas 0 and 2 of a 4-replica stage 200 ms apart and
// every other pair 1 ms apart: the ring 0-1-2-3 never uses that link, a
// direct all-reduce must.
const fourRegions = `
name: four-regions
compute:
  layer_forward_s: 0.001
  activation_bytes_per_sample: 1024
  gradient_bytes_per_layer: 1024
nodes:
  - {name: node-0, region: r0}
  - {name: node-1, region: r1}
  - {name: node-2, region: r2}
  - {name: node-3, region: r3}
default_link: {latency_ms: 1, bandwidth_gib_s: 1}
links:
  - {a: r0, b: r2, latency_ms: 200, bandwidth_gib_s: 1}
`

// The workers run the algorithm the plan names: with direct, replicas 0
// and 2 wait for each other's gradient over the 200 ms link between them
// (gradients go straight to every replica); the replicas stay
// bit-identical.
func TestDirectAllReduceSendsToEveryReplica(t *testing.T) {
	su := setup{schedule: "gpipe", stages: 1, replicas: 4, mbs: 4, size: 1, layers: 2}
	cfg := trainConfig(su.layers, su.mbs, su.size)
	ref, err := model.NewTrainer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	const steps = 2
	c, d, res := trainPlan(t, withAllReduce(t, su, scheduler.AllReduceDirect), ref.Cfg, steps, fourRegions)
	// Absolute times (the workers share this clock) of R@s0 on worker w.
	at := func(r *workertest.Result, w int) (start, end float64) {
		run := r.Runs[w]
		for _, tm := range run.GetTimings() {
			if tm.GetAction() == "R@s0" {
				return run.GetStartedUnixS() + tm.GetStartS(), run.GetStartedUnixS() + tm.GetEndS()
			}
		}
		t.Fatalf("worker %d reported no R@s0", w)
		return 0, 0
	}
	for step, r := range res {
		// Worker 0 cannot finish before worker 2's gradient, sent when 2
		// started its all-reduce, has crossed the 200 ms link; and
		// vice versa.
		s0, e0 := at(r, 0)
		s2, e2 := at(r, 2)
		if e0-s2 < 0.1999 || e2-s0 < 0.1999 {
			t.Errorf("step %d: workers 0 and 2 ended their direct all-reduce %.3f s and %.3f s after the other began it, want >= 0.2 (the 0-2 link)", step+1, e0-s2, e2-s0)
		}
	}
	checkpointParams(t, c, d, steps)
	sameAcrossReplicas(t, c, d, steps)
}

// A worker refuses a direct all-reduce tensor that the plan does not
// send it: the sender's own position, a wrong size.
func TestDirectAllReduceRejectsStrayTensors(t *testing.T) {
	refusesAllReduceTensors(t, scheduler.AllReduceDirect, []strayTensor{
		{"wrong step", 1, 2, 1, "not another replica's gradient"},
		{"from itself", 0, 0, 1, "not another replica's gradient"},
		{"a ring chunk", 1, 1, 3, "elements"},
	})
}

// The ordered all-reduce on one stage of three replicas, microbatches
// 0, 1, 2 dealt to workers 0, 1, 2: worker 0 holds the first run, so the
// only tensor it takes is the total (step 3) from worker 2.
func TestOrderedAllReduceRejectsOutOfOrderTensors(t *testing.T) {
	refusesAllReduceTensors(t, scheduler.AllReduceOrdered, []strayTensor{
		{"another replica's running sum", 1, 2, 1, "does not follow the microbatch order"},
		{"a total not from the last run", 1, 3, 1, "does not follow the microbatch order"},
		{"a step past the total", 2, 4, 1, "does not follow the microbatch order"},
		{"a ring chunk as the total", 2, 3, 3, "elements"},
	})
}

// strayTensor is an all-reduce tensor sent to worker 0 of a one-stage,
// three-replica GPipe plan, carrying 1/div of the stage's gradient, and
// the refusal expected.
type strayTensor struct {
	name            string
	from, step, div int
	want            string
}

func refusesAllReduceTensors(t *testing.T, alg string, cases []strayTensor) {
	t.Helper()
	su := setup{schedule: "gpipe", stages: 1, replicas: 3, mbs: 3, size: 1, layers: 2}
	cfg := trainConfig(su.layers, su.mbs, su.size)
	ref, err := model.NewTrainer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	plan := withAllReduce(t, su, alg)
	c := workertest.Start(t, len(plan.Workers), testJob, nil)
	d := &workertest.Driver{Clients: workertest.Dial(t, c.Addrs), Peers: c.Addrs, Plan: plan, Train: ref.Cfg,
		Fence: &pb.Fence{Job: testJob, LeaderRev: 3, Epoch: 1}}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := d.Configure(ctx, nil); err != nil {
		t.Fatal(err)
	}
	total := 0
	for _, st := range ref.States() {
		total += len(st.T.W)
	}
	r := rand.New(rand.NewPCG(1, 2))
	for _, tc := range cases {
		size := total / tc.div
		data := make([]float32, size)
		for i := range data {
			data[i] = r.Float32()
		}
		h := &pb.TensorHeader{Fence: d.Fence, Iteration: 1, Kind: pb.TensorKind_TENSOR_KIND_ALLREDUCE, Microbatch: -1,
			Stage: 0, Step: int32(tc.step), From: int32(tc.from), To: 0, Shape: []int32{int32(size)}}
		err := transport.Send(ctx, peerClient(t, c.Addrs[0]), h, transport.EncodeFloat32s(data), 0)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s %s: got %v, want a refusal saying %q", alg, tc.name, err, tc.want)
		}
	}
}
