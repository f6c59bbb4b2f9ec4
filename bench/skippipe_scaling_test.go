// Package bench holds benchmarks that span packages and the plots made
// from them.
package bench

import (
	"encoding/csv"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"stagecoach/scheduler"
	"stagecoach/scheduler/skippipe"
	"stagecoach/sim"
)

var skipPlotDir = flag.String("skippipe.plot", "", "write skippipe-scaling.csv and .png (planning time over nodes and microbatches) to this directory")

// scalingCluster is a heterogeneous random cluster: n nodes dealt over ns
// stages, asymmetric delays from 0.05 to ~3 s, forward times from 0.3 to
// 1.3 s, and a node memory just large enough for the visits.
func scalingCluster(n, ns, perOrigin int) skippipe.Config {
	rng := rand.New(rand.NewPCG(uint64(n*1000+ns), uint64(perOrigin)))
	sizes := make([]int, ns)
	for i := range n {
		sizes[i%ns]++
	}
	cfg := skippipe.Config{StageSizes: sizes, MicrobatchesPerOrigin: perOrigin, Seed: 1, CollisionAware: true, RefinePlacement: true}
	cfg.Rules = scheduler.DefaultSkipRules(ns)
	cfg.Memory = skippipe.VisitCap(sizes[0]*perOrigin, cfg.Rules.PathStages, sizes) + 1
	for i := range n {
		cfg.NodeNames = append(cfg.NodeNames, fmt.Sprintf("h%d", i))
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

var scalingNodes = []int{16, 32, 64}
var scalingPerOrigin = []int{2, 6, 12}

// BenchmarkSkipPipeScaling plans collision-aware SkipPipe (placement
// refinement included) on clusters of 16 to 64 nodes (stages = nodes/4)
// with 2 to 12 microbatches per origin. The 64-node, 16-stage rows are
// the scaling goal: under 10 s each. The last plan of each row must pass
// the validator.
func BenchmarkSkipPipeScaling(b *testing.B) {
	for _, n := range scalingNodes {
		for _, per := range scalingPerOrigin {
			cfg := scalingCluster(n, n/4, per)
			b.Run(fmt.Sprintf("nodes=%d/stages=%d/mb=%d", n, n/4, cfg.StageSizes[0]*per), func(b *testing.B) {
				var plan *scheduler.Plan
				for b.Loop() {
					var err error
					if plan, _, err = skippipe.Plan(cfg); err != nil {
						b.Fatal(err)
					}
				}
				if err := scheduler.Validate(plan); err != nil {
					b.Fatal(err)
				}
			})
		}
	}
}

// TestSkipPipeScalingPlot times one plan per grid point and plots it; it
// runs only with -skippipe.plot DIR (timings are measurements, not
// assertions).
func TestSkipPipeScalingPlot(t *testing.T) {
	if *skipPlotDir == "" {
		t.Skip("set -skippipe.plot DIR to write the scaling plot")
	}
	if err := os.MkdirAll(*skipPlotDir, 0o755); err != nil {
		t.Fatal(err)
	}
	fh, err := os.Create(filepath.Join(*skipPlotDir, "skippipe-scaling.csv"))
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	cw := csv.NewWriter(fh)
	_ = cw.Write([]string{"nodes", "stages", "microbatches", "plan_time_s", "estimate_s"})
	var series []sim.Series
	for _, n := range scalingNodes {
		s := sim.Series{Name: fmt.Sprintf("%d nodes, %d stages", n, n/4)}
		for _, per := range scalingPerOrigin {
			cfg := scalingCluster(n, n/4, per)
			start := time.Now()
			plan, st, err := skippipe.Plan(cfg)
			took := time.Since(start).Seconds()
			if err != nil {
				t.Fatal(err)
			}
			m := len(plan.Microbatches)
			_ = cw.Write([]string{strconv.Itoa(n), strconv.Itoa(n / 4), strconv.Itoa(m), strconv.FormatFloat(took, 'g', 4, 64), strconv.FormatFloat(st.EstimateS, 'g', 6, 64)})
			s.X = append(s.X, float64(m))
			s.Y = append(s.Y, took)
			t.Logf("%d nodes, %d stages, %d microbatches: planned in %.2f s", n, n/4, m, took)
		}
		series = append(series, s)
	}
	cw.Flush()
	if err := cw.Error(); err != nil {
		t.Fatal(err)
	}
	if err := sim.WriteLinePlot(filepath.Join(*skipPlotDir, "skippipe-scaling.png"), "SkipPipe planning time", "microbatches", "plan time (s)", series); err != nil {
		t.Fatal(err)
	}
}
