// Command simvsreal checks that the simulator predicts real runs: on
// loopback, with the workers emulating a scaled 12-region network (one
// node per region of the SkipPipe table, 6 stages of 2), it first
// calibrates a cost model from a short GPipe run (measured compute per
// stage and node, backward and loss ratios, the per-hop overhead the
// emulated links do not explain), then runs GPipe, 1F1B and SkipPipe for a
// few steps each and simulates each run's own plan with that one cost
// model. It prints the measured and simulated iteration time (the
// workers' program span: first action to last, all-reduce included) and
// their ratio side by side, plus the ratio with each run's own
// calibration.
//
//	go run ./bench/simvsreal [-link-scale 0.02] [-steps 6] [-out bench-out/simvsreal]
//
// Every number comes from one invocation on one machine: compare ratios,
// not absolute times, across machines.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"stagecoach/bench/internal/localrun"
	"stagecoach/coordinator"
	"stagecoach/data"
	"stagecoach/model"
	"stagecoach/planner"
	"stagecoach/scheduler"
	"stagecoach/sim"
)

func main() {
	var (
		scale     = flag.Float64("link-scale", 0.02, "emulated hop time over the SkipPipe table's hop time for one microbatch")
		steps     = flag.Int("steps", 6, "steps per run (the first is warm-up, the first two for calibration)")
		out       = flag.String("out", "bench-out/simvsreal", "output directory (plans, traces, calibration.yaml)")
		corpus    = flag.String("corpus", "", "training text (default $(go env GOROOT)/src)")
		maxBytes  = flag.Int64("max-bytes", 4<<20, "corpus bytes to load")
		schedules = []string{"gpipe", "1f1b", planner.SkipPipe}
	)
	flag.Parse()
	if err := run(*scale, *steps, *out, *corpus, *maxBytes, schedules); err != nil {
		fmt.Fprintln(os.Stderr, "simvsreal:", err)
		os.Exit(1)
	}
}

// train is the bench model: small enough that compute stays a minor
// share of an iteration on two shared cores, so the network emulation
// (which the simulator models exactly) dominates as on the real 12-region
// cluster.
func train() model.TrainConfig {
	return model.TrainConfig{Model: model.Config{Layers: 6, Dim: 16, Heads: 2, Ctx: 32, Seed: 1},
		Microbatches: 12, MicrobatchSize: 4}
}

// Cluster12 is the SkipPipe preset cut to one node in each of its 12
// regions, 6 stages of 2 nodes, 6 microbatches per stage-0 node, links
// scaled for the bench model (coordinator.ScaleLinks).
func Cluster12(scale float64, tc model.TrainConfig) (*sim.Cluster, []string, error) {
	c := sim.SkipPipeGeo()
	c.Nodes = c.Nodes[:12]
	c.Workload.StageNodes = []int{2, 2, 2, 2, 2, 2}
	c.Workload.MicrobatchesPerOrigin = tc.Microbatches / 2
	if err := c.Validate(); err != nil {
		return nil, nil, err
	}
	sc, err := coordinator.ScaleLinks(c, scale, tc.Model, tc.MicrobatchSize)
	if err != nil {
		return nil, nil, err
	}
	var names []string
	for _, n := range sc.Nodes {
		names = append(names, n.Name)
	}
	return sc, names, nil
}

type row struct {
	schedule                string
	measured, sim, self     float64
	wall, pipeMeas, pipeSim float64
	allReduce               string
}

func run(scale float64, steps int, out, corpus string, maxBytes int64, schedules []string) error {
	if steps < 4 {
		return fmt.Errorf("-steps %d: need at least 4 (two warm-up steps, then measurements)", steps)
	}
	if corpus == "" {
		d, err := data.DefaultCorpusDir()
		if err != nil {
			return err
		}
		corpus = d
	}
	tc := train()
	cl, names, err := Cluster12(scale, tc)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	job := func(name, schedule string, costs *sim.Cluster) localrun.Job {
		return localrun.Job{Name: name, Dir: out, Schedule: schedule, Nodes: names, Stages: 6, Train: tc, Steps: steps,
			Cluster: cl, Costs: costs, CorpusDir: corpus, MaxCorpusBytes: maxBytes}
	}
	start := time.Now()
	fmt.Fprintf(os.Stderr, "calibrating on %s (GPipe, %d steps)...\n", cl.Name, steps)
	calib, err := localrun.Run(ctx, job("calibrate", "gpipe", nil))
	if err != nil {
		return fmt.Errorf("calibration run: %w", err)
	}
	k := calib.CostModel
	if k == nil {
		return fmt.Errorf("calibration run measured nothing")
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	kPath := filepath.Join(out, "calibration.yaml")
	if err := localrun.WriteYAML(kPath, k); err != nil {
		return err
	}
	var rows []row
	for _, s := range schedules {
		fmt.Fprintf(os.Stderr, "running %s (%d steps)...\n", s, steps)
		sum, err := localrun.Run(ctx, job("run-"+s, s, k))
		if err != nil {
			return fmt.Errorf("%s: %w", s, err)
		}
		if sum.Measured == nil {
			return fmt.Errorf("%s: no measured timeline", s)
		}
		p := sum.Measured.Plan
		kp, err := coordinator.ForPlan(k, p, tc.Model)
		if err != nil {
			return err
		}
		res, err := sim.Run(p, kp, sim.Options{Detail: true})
		if err != nil {
			return fmt.Errorf("%s: simulate with the calibration: %w", s, err)
		}
		r := row{schedule: s, measured: sum.MeasuredSpanS, sim: res.MakespanS,
			pipeMeas: localrun.PipelineTime(sum.Measured), pipeSim: localrun.PipelineTime(res.Run()), allReduce: allReduces(p)}
		if sum.CostModel != nil {
			if self, err := sim.Run(p, sum.CostModel, sim.Options{}); err == nil {
				r.self = self.MakespanS
			}
		}
		n := 0
		for _, st := range sum.Steps[1:] {
			r.wall += st.ComputeS
			n++
		}
		r.wall /= float64(max(n, 1))
		rows = append(rows, r)
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "schedule\tmeasured_s\tsimulated_s\tsim/meas\tself_sim_s\tself/meas\tpipeline_meas_s\tpipeline_sim_s\tsim/meas\trun_rpc_s\tall_reduce\t\n")
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%.3f\t%.3f\t%.2f\t%.3f\t%.2f\t%.3f\t%.3f\t%.2f\t%.3f\t%s\t\n", r.schedule, r.measured, r.sim, r.sim/r.measured,
			r.self, r.self/r.measured, r.pipeMeas, r.pipeSim, r.pipeSim/r.pipeMeas, r.wall, r.allReduce)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Printf("cluster %s (12 nodes, 12 regions, 6 stages x 2), model %d layers dim %d ctx %d, %d microbatches x %d; cost model %s; %d steps per run, %.0f s in all\n",
		cl.Name, tc.Model.Layers, tc.Model.Dim, tc.Model.Ctx, tc.Microbatches, tc.MicrobatchSize, kPath, steps, time.Since(start).Seconds())
	fmt.Println("measured_s: median program span (first action to last, all-reduce included) over steps 2..N; simulated_s: the same plan under the GPipe run's calibration; self: under the run's own; pipeline: to the end of the last forward/backward/loss (last step only, all-reduce excluded); run_rpc_s: mean RunIteration wall time at the coordinator; all_reduce: the algorithm the plan chose for each stage's replicas")
	return nil
}

// allReduces summarises the all-reduce algorithms of the replicated
// stages ("direct x6", or each stage's when they differ).
func allReduces(p *scheduler.Plan) string {
	reps := p.StageWorkers()
	var algs []string
	for s, st := range p.Stages {
		if len(reps[s]) > 1 {
			algs = append(algs, st.AllReduceAlgorithm())
		}
	}
	if len(algs) == 0 {
		return "-"
	}
	for _, a := range algs[1:] {
		if a != algs[0] {
			return strings.Join(algs, ",")
		}
	}
	return fmt.Sprintf("%s x%d", algs[0], len(algs))
}
