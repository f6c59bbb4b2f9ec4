package skippipe

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"testing"

	"stagecoach/scheduler"
)

// randomSkipConfig draws a heterogeneous cluster: uneven, asymmetric
// delays, per-node forward times, a few stage-0 origins, and a node
// memory that lets every stage take every microbatch.
func randomSkipConfig(seed int64) Config {
	rng := rand.New(rand.NewPCG(uint64(seed), 1))
	ns := 3 + rng.IntN(5)
	sizes := make([]int, ns)
	n := 0
	for s := range sizes {
		sizes[s] = 1 + rng.IntN(3)
		n += sizes[s]
	}
	cfg := Config{StageSizes: sizes, MicrobatchesPerOrigin: 1 + rng.IntN(4), Seed: seed, Iterations: 300}
	m := sizes[0] * cfg.MicrobatchesPerOrigin
	smallest := n
	for _, k := range sizes[1:] {
		smallest = min(smallest, k)
	}
	cfg.Memory = (m+smallest-1)/smallest + rng.IntN(2)
	cfg.Rules = scheduler.DefaultSkipRules(ns)
	cfg.Rules.PathStages = 2 + rng.IntN(ns-1)
	cfg.Rules.MaxJump = 1 + rng.IntN(4)
	cfg.Rules.MaxSwaps = rng.IntN(3)
	if cfg.Rules.MaxJump*(cfg.Rules.PathStages-1) < ns-1 {
		// Keep some legal sequence: a path of jumps must be able to reach
		// enough stages; the planner reports the rest as an error.
		cfg.Rules.MaxJump = ns
	}
	for i := range n {
		cfg.NodeNames = append(cfg.NodeNames, fmt.Sprintf("r%d", i))
		cfg.ForwardS = append(cfg.ForwardS, 0.2+rng.Float64())
	}
	cfg.Delay = make([][]float64, n)
	for a := range n {
		cfg.Delay[a] = make([]float64, n)
		for b := range n {
			if a != b {
				cfg.Delay[a][b] = 0.05 + 3*rng.Float64()*rng.Float64()
			}
		}
	}
	if rng.IntN(2) == 0 {
		cfg.LinkBusy = make([][]float64, n)
		for a := range n {
			cfg.LinkBusy[a] = make([]float64, n)
			for b := range n {
				cfg.LinkBusy[a][b] = cfg.Delay[a][b] * rng.Float64()
			}
		}
	}
	cfg.RefinePlacement = rng.IntN(2) == 0
	return cfg
}

// Every plan of every variant passes Validate, skip rules and caps
// included, over many seeded random clusters.
func TestPlansValidateOnRandomClusters(t *testing.T) {
	seeds := 60
	if testing.Short() {
		seeds = 15
	}
	for seed := int64(1); seed <= int64(seeds); seed++ {
		cfg := randomSkipConfig(seed)
		for _, name := range append(Variants(), FullGreedy) {
			plan, st, err := PlanVariant(name, cfg)
			if err != nil {
				t.Fatalf("seed %d %s: %v", seed, name, err)
			}
			if err := scheduler.Validate(plan); err != nil {
				t.Fatalf("seed %d %s: %v", seed, name, err)
			}
			if plan.Schedule != name {
				t.Errorf("seed %d: schedule %q, want %q", seed, plan.Schedule, name)
			}
			if want := cfg.StageSizes[0] * cfg.MicrobatchesPerOrigin; len(plan.Microbatches) != want {
				t.Errorf("seed %d %s: %d microbatches, want %d", seed, name, len(plan.Microbatches), want)
			}
			if name != Full && name != FullGreedy {
				if plan.Skip == nil || plan.Skip.MaxPerWorker != cfg.Memory {
					t.Errorf("seed %d %s: skip rules %+v, want a per-worker cap of %d", seed, name, plan.Skip, cfg.Memory)
				}
				for mb, m := range plan.Microbatches {
					if len(m.Path) != cfg.Rules.PathStages {
						t.Errorf("seed %d %s: microbatch %d visits %d stages, want %d", seed, name, mb, len(m.Path), cfg.Rules.PathStages)
					}
				}
			}
			if st.EstimateS <= 0 {
				t.Errorf("seed %d %s: estimate %v", seed, name, st.EstimateS)
			}
		}
	}
}

// The same config gives the same plan, byte for byte; another seed may not.
func TestDeterministic(t *testing.T) {
	for seed := int64(1); seed <= 5; seed++ {
		cfg := randomSkipConfig(seed)
		for _, name := range append(Variants(), FullGreedy) {
			var out [2]bytes.Buffer
			for i := range out {
				plan, _, err := PlanVariant(name, cfg)
				if err != nil {
					t.Fatalf("seed %d %s: %v", seed, name, err)
				}
				if err := scheduler.Encode(&out[i], plan); err != nil {
					t.Fatal(err)
				}
			}
			if !bytes.Equal(out[0].Bytes(), out[1].Bytes()) {
				t.Fatalf("seed %d %s: two runs gave different plans", seed, name)
			}
		}
	}
}

// The collision-aware plan is no slower, by the planner's estimate, than
// the network-oblivious one, and skipping beats the full pipeline.
func TestBeatsBaselinesOnEstimate(t *testing.T) {
	for seed := int64(1); seed <= 8; seed++ {
		cfg := randomSkipConfig(seed)
		cfg.Iterations = 0
		est := map[string]float64{}
		for _, name := range append(Variants(), FullGreedy) {
			_, st, err := PlanVariant(name, cfg)
			if err != nil {
				t.Fatal(err)
			}
			est[name] = st.EstimateS
		}
		if est[CA] > est[Random]+1e-9 {
			t.Errorf("seed %d: skippipe %.3f s slower than skippipe-random %.3f s", seed, est[CA], est[Random])
		}
		if cfg.Rules.PathStages < len(cfg.StageSizes) && est[CA] > est[Full]+1e-9 {
			t.Errorf("seed %d: skippipe %.3f s slower than gpipe %.3f s", seed, est[CA], est[Full])
		}
	}
}

func TestConfigErrorsNameTheField(t *testing.T) {
	base := randomSkipConfig(3)
	for _, tc := range []struct {
		field string
		edit  func(c *Config)
	}{
		{"stage_sizes", func(c *Config) { c.StageSizes = append([]int{1}, c.StageSizes...) }},
		{"delay", func(c *Config) { c.Delay = c.Delay[1:] }},
		{"forward_s", func(c *Config) { c.ForwardS = append([]float64{}, c.ForwardS...); c.ForwardS[0] = -1 }},
		{"memory", func(c *Config) { c.Memory = 0 }},
		{"microbatches_per_origin", func(c *Config) { c.MicrobatchesPerOrigin = 0 }},
		{"node_names", func(c *Config) {
			c.NodeNames = append([]string{}, c.NodeNames...)
			c.NodeNames[1] = c.NodeNames[0]
		}},
		{"path_stages", func(c *Config) { c.Rules.PathStages = 1 }},
		{"partition", func(c *Config) { c.Partition = [][]int{{0}} }},
	} {
		c := base
		tc.edit(&c)
		_, _, err := Plan(c)
		if err == nil || !bytes.Contains([]byte(err.Error()), []byte(tc.field)) {
			t.Errorf("%s: error %v, want one naming %s", tc.field, err, tc.field)
		}
	}
}

func TestPlaceBeatsIdentityAndIsDeterministic(t *testing.T) {
	for seed := int64(1); seed <= 10; seed++ {
		cfg := randomSkipConfig(seed)
		pl, err := Place(&cfg)
		if err != nil {
			t.Fatal(err)
		}
		ident := make([][]int, len(cfg.StageSizes))
		next := 0
		for s, k := range cfg.StageSizes {
			for range k {
				ident[s] = append(ident[s], next)
				next++
			}
		}
		base, err := PlacementCost(cfg, ident)
		if err != nil {
			t.Fatal(err)
		}
		got, err := PlacementCost(cfg, pl.Partition)
		if err != nil {
			t.Fatal(err)
		}
		if got != pl.Cost || got > base {
			t.Errorf("seed %d: placement cost %v (reported %v), identity %v", seed, got, pl.Cost, base)
		}
		again, _ := Place(&cfg)
		if fmt.Sprint(again.Partition) != fmt.Sprint(pl.Partition) {
			t.Errorf("seed %d: placement differs between runs", seed)
		}
	}
}

// A plan with a path over the cap is refused by the validator, so the
// property test above is not vacuous.
func TestValidatorCatchesBrokenPlan(t *testing.T) {
	cfg := randomSkipConfig(7)
	plan, _, err := Plan(cfg)
	if err != nil {
		t.Fatal(err)
	}
	plan.Skip.MaxPerWorker = 1
	var ve *scheduler.ValidationError
	if err := scheduler.Validate(plan); !errors.As(err, &ve) || ve.Rule != scheduler.RuleSkipCap {
		t.Fatalf("cap of 1: got %v, want a %s error", err, scheduler.RuleSkipCap)
	}
}

// The per-node cap holds every visit; when paths visit every stage, the
// smallest stage's nodes hold all the microbatches between them (the
// clause recovery's copy of the formula once lacked).
func TestVisitCap(t *testing.T) {
	for _, tc := range []struct {
		m, pathStages int
		sizes         []int
		want          int
	}{
		{30, 5, []int{3, 4, 4, 3, 3, 3}, 8},  // 120 visits over 17 nodes
		{30, 6, []int{3, 4, 4, 3, 3, 3}, 10}, // 30 through a stage of 3
		{12, 2, []int{2, 1, 5}, 2},           // 12 visits over 6 nodes; the 1-node stage is skippable
		{12, 3, []int{2, 1, 1}, 12},          // every path through both single nodes
		{4, 2, []int{4}, 1},
	} {
		if got := VisitCap(tc.m, tc.pathStages, tc.sizes); got != tc.want {
			t.Errorf("VisitCap(%d, %d, %v) = %d, want %d", tc.m, tc.pathStages, tc.sizes, got, tc.want)
		}
	}
}
