package coordinator

import (
	"fmt"
	"testing"

	"stagecoach/internal/etcdx"
	"stagecoach/model"
	"stagecoach/planner"
	"stagecoach/scheduler"
	"stagecoach/sim"
)

// The coordinator's plans carry the all-reduce algorithm its cost model
// prices cheaper: on the emulated skippipe-geo network with the small
// model of bench/skipvsgpipe, stage 0's five intercontinental replicas go
// direct (every hop is overhead-bound), for SkipPipe and for its GPipe
// baseline alike; without a cost model plans keep the ring.
func TestPlansChooseAllReduce(t *testing.T) {
	tc := model.TrainConfig{Model: model.Config{Layers: 6, Dim: 8, Heads: 2, Ctx: 32, Seed: 1}, Microbatches: 30, MicrobatchSize: 16}
	cl, err := ScaleLinks(sim.SkipPipeGeo(), 0.05, tc.Model, tc.MicrobatchSize)
	if err != nil {
		t.Fatal(err)
	}
	yaml, err := EncodeCluster(cl)
	if err != nil {
		t.Fatal(err)
	}
	var members []etcdx.Member
	for _, n := range cl.Nodes {
		members = append(members, etcdx.Member{Name: n.Name, Addr: "127.0.0.1:1"})
	}
	for _, schedule := range []string{planner.SkipPipe, planner.SkipPipeFull} {
		cfg := &Config{Simulator: sim.Simulator{}, Workers: len(members), Stages: 6, Schedule: schedule, Train: tc, Cluster: yaml}
		p, _, _, err := buildPlan(cfg, members, 1)
		if err != nil {
			t.Fatal(err)
		}
		k, err := ForPlan(cl, p, tc.Model)
		if err != nil {
			t.Fatal(err)
		}
		reps := p.StageWorkers()
		for s, st := range p.Stages {
			direct, ring := *p, *p
			direct.Stages = append([]scheduler.Stage(nil), p.Stages...)
			ring.Stages = append([]scheduler.Stage(nil), p.Stages...)
			direct.Stages[s].AllReduce, ring.Stages[s].AllReduce = scheduler.AllReduceDirect, scheduler.AllReduceRing
			d, err1 := sim.AllReduceTime(&direct, k, s)
			r, err2 := sim.AllReduceTime(&ring, k, s)
			if err1 != nil || err2 != nil {
				t.Fatal(err1, err2)
			}
			t.Logf("%s stage %d (%d replicas, %.0f gradient bytes): %q; ring %.3f s, direct %.3f s", schedule, s, len(reps[s]), k.Compute.StageGradientBytes[s], st.AllReduce, r, d)
			want := scheduler.AllReduceRing
			if d < r {
				want = scheduler.AllReduceDirect
			}
			if st.AllReduce != want {
				t.Errorf("%s stage %d: %q, want the cheaper %q (ring %.3f s, direct %.3f s)", schedule, s, st.AllReduce, want, r, d)
			}
		}
		if len(reps[0]) != 5 || p.Stages[0].AllReduce != scheduler.AllReduceDirect {
			t.Errorf("%s: stage 0 has %d replicas and all-reduces by %q, want 5 and direct", schedule, len(reps[0]), p.Stages[0].AllReduce)
		}
	}

	// A classic plan keeps the ordered all-reduce its generator gives
	// replicated stages (exactness); checkPlan's chooser leaves it.
	var plain []etcdx.Member
	for i := range 4 {
		plain = append(plain, etcdx.Member{Name: fmt.Sprintf("w%d", i), Addr: "127.0.0.1:1"})
	}
	cfg := &Config{Simulator: sim.Simulator{}, Workers: 4, Stages: 2, Schedule: "1f1b", Train: model.TrainConfig{Model: tc.Model, Microbatches: 4, MicrobatchSize: 2}}
	p, _, _, err := buildPlan(cfg, plain, 1)
	if err != nil {
		t.Fatal(err)
	}
	for s, st := range p.Stages {
		if st.AllReduce != scheduler.AllReduceOrdered {
			t.Errorf("1f1b, 2 replicas per stage: stage %d all-reduces by %q, want %q", s, st.AllReduce, scheduler.AllReduceOrdered)
		}
	}
	// Config.AllReduce trades that for speed: direct as asked, or auto
	// (no cost model here: the default ring).
	for alg, want := range map[string]string{scheduler.AllReduceDirect: scheduler.AllReduceDirect, scheduler.AllReduceAuto: ""} {
		c := *cfg
		c.AllReduce = alg
		p, _, _, err := buildPlan(&c, plain, 1)
		if err != nil {
			t.Fatal(err)
		}
		for s, st := range p.Stages {
			if st.AllReduce != want {
				t.Errorf("--all-reduce %s: stage %d all-reduces by %q, want %q", alg, s, st.AllReduce, want)
			}
		}
	}
}
