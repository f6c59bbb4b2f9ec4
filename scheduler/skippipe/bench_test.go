package skippipe

import (
	"fmt"
	"math/rand/v2"
	"testing"

	"stagecoach/scheduler"
)

// benchCluster is a heterogeneous random cluster of n nodes in ns stages
// (stage 0 a quarter larger), uneven delays and compute, memory just
// enough for every stage to take every microbatch.
func benchCluster(n, ns, perOrigin int) Config {
	rng := rand.New(rand.NewPCG(uint64(n*1000+ns), uint64(perOrigin)))
	sizes := make([]int, ns)
	for i := range n {
		sizes[i%ns]++
	}
	cfg := Config{StageSizes: sizes, MicrobatchesPerOrigin: perOrigin, Seed: 1, CollisionAware: true, RefinePlacement: true}
	smallest := n
	for _, k := range sizes[1:] {
		smallest = min(smallest, k)
	}
	m := sizes[0] * perOrigin
	cfg.Rules = scheduler.DefaultSkipRules(ns)
	cfg.Memory = (m*(cfg.Rules.PathStages-1)+(n-sizes[0])-1)/(n-sizes[0]) + 1
	cfg.Memory = max(cfg.Memory, (m+smallest-1)/smallest/2+1)
	for i := range n {
		cfg.NodeNames = append(cfg.NodeNames, fmt.Sprintf("b%d", i))
		cfg.ForwardS = append(cfg.ForwardS, 0.3+rng.Float64())
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
	return cfg
}

// BenchmarkPlan times the collision-aware planner (placement
// included) over nodes, stages and microbatches per origin. The 64-node,
// 16-stage case is the scaling goal (under 10 s per plan).
func BenchmarkPlan(b *testing.B) {
	for _, c := range []struct{ n, ns, per int }{
		{20, 6, 6}, {32, 8, 6}, {64, 16, 2}, {64, 16, 6}, {64, 16, 12},
	} {
		cfg := benchCluster(c.n, c.ns, c.per)
		m := cfg.StageSizes[0] * c.per
		b.Run(fmt.Sprintf("nodes=%d/stages=%d/mb=%d", c.n, c.ns, m), func(b *testing.B) {
			for b.Loop() {
				plan, _, err := Plan(cfg)
				if err != nil {
					b.Fatal(err)
				}
				if err := scheduler.Validate(plan); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
