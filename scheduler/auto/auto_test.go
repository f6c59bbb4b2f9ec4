package auto

import (
	"fmt"
	"strings"
	"testing"

	"stagecoach/scheduler"
	"stagecoach/sim"
)

// TestAutoNeverSlowerThanNamed: on several shapes and cost models (equal
// F=B=W halves, a costly weight gradient, a slow node), the search's pick
// is never slower than the best named schedule of the same run, and its
// plan is valid and named auto.
func TestAutoNeverSlowerThanNamed(t *testing.T) {
	type tc struct {
		name   string
		spec   scheduler.Spec
		modify func(c *sim.Cluster)
		// strict: the list scheduler at these costs beats every named
		// schedule (made at unit costs).
		strict bool
	}
	cases := []tc{
		{"p4 m8", scheduler.Spec{Stages: 4, Microbatches: 8, Layers: 8}, nil, false},
		{"p4 m4 wgrad heavy", scheduler.Spec{Stages: 4, Microbatches: 4, Layers: 8}, func(c *sim.Cluster) {
			c.Compute.InputGradRatio, c.Compute.WeightGradRatio, c.Compute.BackwardRatio = 0.8, 1.6, 2.4
		}, true},
		{"p3 m6 memory 3", scheduler.Spec{Stages: 3, Microbatches: 6, Layers: 6, Memory: 3}, nil, false},
		{"p4 m8 slow node", scheduler.Spec{Stages: 4, Microbatches: 8, Layers: 8, Nodes: []string{"a", "b", "c", "d"}}, func(c *sim.Cluster) {
			c.AnyNode = false
			c.Nodes = []sim.Node{{Name: "a", Speed: 1}, {Name: "b", Speed: 0.5}, {Name: "c", Speed: 1}, {Name: "d", Speed: 1}}
		}, false},
	}
	for _, k := range cases {
		t.Run(k.name, func(t *testing.T) {
			c := sim.Homogeneous()
			if k.modify != nil {
				k.modify(c)
			}
			res, err := Search(k.spec, c)
			if err != nil {
				t.Fatal(err)
			}
			bestName, bestT, _ := bestNamed(t, k.spec, c)
			r, err := sim.Run(res.Best.Plan, c, sim.Options{})
			if err != nil {
				t.Fatal(err)
			}
			if r.IterationTimeS != res.Best.IterationS {
				t.Fatalf("auto's plan simulates at %v s, the search said %v s", r.IterationTimeS, res.Best.IterationS)
			}
			if r.IterationTimeS > bestT {
				t.Fatalf("auto picked %s at %.6g s, slower than %s at %.6g s", res.Best.Label(), r.IterationTimeS, bestName, bestT)
			}
			if k.strict && !(r.IterationTimeS < bestT) {
				t.Fatalf("auto found nothing faster than %s (%.6g s) where the list scheduler at the real costs should", bestName, bestT)
			}
			if res.Best.Plan.Schedule != "auto" {
				t.Fatalf("plan named %q", res.Best.Plan.Schedule)
			}
			if err := scheduler.Validate(res.Best.Plan); err != nil {
				t.Fatalf("picked plan invalid: %v", err)
			}
			lists := 0
			for _, cand := range res.Candidates {
				if cand.Name == "list" {
					lists++
				}
			}
			if lists == 0 {
				t.Fatal("no list-scheduled candidate was tried")
			}
			t.Logf("%s: auto %s %.4g s; best named %s %.4g s (%d candidates)", k.name, res.Best.Label(), res.Best.IterationS, bestName, bestT, len(res.Candidates))
		})
	}
}

func TestAutoRefusesWhatNothingFits(t *testing.T) {
	// One activation per worker cannot hold a microbatch's turn-round on
	// any schedule of 4 stages with 2 chunks, nor GPipe's fill.
	_, err := Search(scheduler.Spec{Stages: 4, Microbatches: 8, Layers: 8, Memory: 1, Chunks: 2}, sim.Homogeneous())
	if err == nil {
		t.Fatal("a search with nothing feasible returned no error")
	}
}

// A node capacity in bytes rules candidates out as the microbatch count
// does: with 8 GiB per node for a model whose 1F1B needs 15.6 GiB on
// stage 0, the pick fits (gpipe-recompute's 6.3 GiB does), and it is
// slower than the unconstrained pick.
func TestAutoRespectsMemoryInBytes(t *testing.T) {
	spec := scheduler.Spec{Stages: 4, Microbatches: 8, Layers: 24, Samples: 4}
	c := sim.Homogeneous()
	c.Model = &sim.ModelMemory{Vocab: 50304, Dim: 1024, Heads: 16, Ctx: 1024}
	free, err := Search(spec, c)
	if err != nil {
		t.Fatal(err)
	}
	c.DefaultMemoryGiB = 8
	res, err := Search(spec, c)
	if err != nil {
		t.Fatal(err)
	}
	r, err := sim.Run(res.Best.Plan, c, sim.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if r.Infeasible != "" || r.PeakBytes > 8<<30 {
		t.Fatalf("pick %s needs %v bytes: %s", res.Best.Label(), r.PeakBytes, r.Infeasible)
	}
	if res.Best.IterationS <= free.Best.IterationS {
		t.Errorf("pick under 8 GiB %s takes %v s, no slower than the free pick %s (%v s)", res.Best.Label(), res.Best.IterationS, free.Best.Label(), free.Best.IterationS)
	}
	over := 0
	for _, cand := range res.Candidates {
		if strings.Contains(cand.Infeasible, "GiB at t=") {
			over++
		}
	}
	if over == 0 {
		t.Error("no candidate was ruled out by the capacity")
	}
}

// TestAutoOnTheIssueGrid: three cost models (F=B=W; B=2F with W=F; a node
// at half speed and a slow link between two stages) under two device
// capacities in bytes (one 1F1B fits in, one it does not): auto is never
// slower than the fastest named schedule that fits the same capacity.
func TestAutoOnTheIssueGrid(t *testing.T) {
	spec := scheduler.Spec{Stages: 4, Microbatches: 8, Layers: 24, Samples: 4, Nodes: []string{"a", "b", "c", "d"}}
	model := &sim.ModelMemory{Vocab: 50304, Dim: 1024, Heads: 16, Ctx: 1024}
	costs := []struct {
		name  string
		build func() *sim.Cluster
	}{
		{"F=B=W", func() *sim.Cluster {
			c := sim.Homogeneous()
			c.Compute.BackwardRatio, c.Compute.InputGradRatio, c.Compute.WeightGradRatio = 2, 1, 1
			return c
		}},
		{"B=2F W=F", func() *sim.Cluster {
			c := sim.Homogeneous()
			c.Compute.BackwardRatio, c.Compute.InputGradRatio, c.Compute.WeightGradRatio = 3, 2, 1
			return c
		}},
		{"slow node and slow link", func() *sim.Cluster {
			c := sim.Homogeneous()
			c.AnyNode = false
			c.Compute.LayerForwardS = 0.01
			c.Nodes = []sim.Node{{Name: "a", Region: "r1", Speed: 1}, {Name: "b", Region: "r1", Speed: 0.5}, {Name: "c", Region: "r2", Speed: 1}, {Name: "d", Region: "r3", Speed: 1}}
			c.DefaultLink = &sim.Link{LatencyMS: 1, BandwidthGiBs: 10}
			c.Links = []sim.RegionLink{{A: "r2", B: "r3", Link: sim.Link{LatencyMS: 50, BandwidthGiBs: 0.05}}}
			return c
		}},
	}
	for _, cm := range costs {
		for _, gib := range []float64{32, 12} {
			t.Run(fmt.Sprintf("%s/%g GiB", cm.name, gib), func(t *testing.T) {
				c := cm.build()
				c.Model, c.DefaultMemoryGiB = model, gib
				res, err := Search(spec, c)
				if err != nil {
					t.Fatal(err)
				}
				bestName, bestT, refused := bestNamed(t, spec, c)
				r, err := sim.Run(res.Best.Plan, c, sim.Options{})
				if err != nil {
					t.Fatal(err)
				}
				if r.Infeasible != "" || r.PeakBytes > gib*(1<<30) {
					t.Fatalf("auto's pick %s does not fit %g GiB: %s (peak %.0f bytes)", res.Best.Label(), gib, r.Infeasible, r.PeakBytes)
				}
				if r.IterationTimeS > bestT {
					t.Fatalf("auto picked %s at %.6g s, slower than %s at %.6g s", res.Best.Label(), r.IterationTimeS, bestName, bestT)
				}
				t.Logf("auto %s %.4g s; best named %s %.4g s; %d named schedules over capacity", res.Best.Label(), r.IterationTimeS, bestName, bestT, refused)
			})
		}
	}
}

// bestNamed simulates every named schedule that takes spec on c, on its
// own, and returns the fastest that fits c's memory, its iteration time,
// and how many were over the memory.
func bestNamed(t *testing.T, spec scheduler.Spec, c *sim.Cluster) (string, float64, int) {
	t.Helper()
	bestName, bestT, refused := "", 0.0, 0
	for _, name := range scheduler.Names() {
		pl, err := scheduler.Generate(name, spec)
		if err != nil || scheduler.Validate(pl) != nil {
			continue
		}
		r, err := sim.Run(pl, c, sim.Options{})
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if r.Infeasible != "" {
			refused++
			continue
		}
		if bestName == "" || r.IterationTimeS < bestT {
			bestName, bestT = name, r.IterationTimeS
		}
	}
	if bestName == "" {
		t.Fatal("no named schedule fits")
	}
	return bestName, bestT, refused
}
