// Command simfailures checks the failure simulator (sim/failures, the code
// behind `stagecoach sim --failures`) against real runs that lose
// workers. For each case it runs the real job on loopback
// (bench/internal/localrun: real coordinator, gRPC workers emulating the
// links), records the failure trace as it happened (each crash's time
// from the start of step 1, and its node), writes it as a `sim
// --failures` trace, and simulates the same job through it under the
// cost model the coordinator planned with (the calibration), with the
// recovery costs the run measured: detection, and the coordinator's
// recovery (probe, plan, install, for a restore the checkpoint load),
// and the checkpoint write. It prints, per phase (before the failures,
// the failure window, after it), the measured and simulated throughput
// and their ratio.
//
// Cases: skip (bench/skipfailures' default: SkipPipe on the emulated
// skippipe-geo cluster, 4 of the 15 workers outside stage 0 crash during
// steps 9, 12, 15, 18), vacate (its -vacate mode: the 3 workers of stage 3
// crash during steps 9, 12, 15, and the stage goes vacant) and gpipe
// (GPipe, 4 stages x 2 replicas on 8 of the cluster's nodes, a worker of
// stage 1 crashes during step 7; the coordinator waits -replace-wait for a
// replacement, restores the checkpoint of step 4 on the remaining
// pipeline and replays steps 5 and 6).
//
//	go run ./bench/simfailures [-cases skip,vacate,gpipe] [-out bench-out/simfailures]
//
// Every number comes from one invocation on one machine: compare the
// ratios, not absolute times, across machines.
package main

import (
	"context"
	"flag"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"stagecoach/bench/internal/localrun"
	"stagecoach/coordinator"
	"stagecoach/costmodel"
	"stagecoach/model"
	"stagecoach/scheduler"
	"stagecoach/sim"
	"stagecoach/sim/failures"
)

func main() {
	var (
		cases    = flag.String("cases", "skip,vacate,gpipe", "cases to run: skip, vacate, gpipe (comma-separated)")
		out      = flag.String("out", "bench-out/simfailures", "output directory (runs, traces)")
		corpus   = flag.String("corpus", "", "training text (default $(go env GOROOT)/src)")
		maxBytes = flag.Int64("max-bytes", 4<<20, "corpus bytes to load")
		wait     = flag.Duration("replace-wait", time.Second, "gpipe case: the coordinator's wait for a replacement worker")
	)
	flag.Parse()
	var want []string
	for _, c := range strings.Split(*cases, ",") {
		c = strings.TrimSpace(c)
		if c != "skip" && c != "vacate" && c != "gpipe" {
			fmt.Fprintf(os.Stderr, "simfailures: -cases %q: unknown case %q, want skip, vacate or gpipe\n", *cases, c)
			os.Exit(2)
		}
		want = append(want, c)
	}
	if err := run(want, *out, *corpus, *maxBytes, *wait); err != nil {
		fmt.Fprintln(os.Stderr, "simfailures:", err)
		os.Exit(1)
	}
}

// measured is what a real run recorded.
type measured struct {
	mu      sync.Mutex
	at      map[int64]time.Time // commit of each step
	iterS   map[int64]float64   // the step's wall time at the coordinator
	ckptS   []float64           // checkpoint writes
	crashes []crash
	crashed []string
	first   []coordinator.PlanWorker // the plan of step 1
	sum     *coordinator.Summary
}

type crash struct {
	node string
	at   time.Time
}

func newMeasured() *measured {
	return &measured{at: map[int64]time.Time{}, iterS: map[int64]float64{}}
}

// hook makes j record into m and crash one worker (victim) during the
// step after each of after.
func (m *measured) hook(j *localrun.Job, after []int64, victim func(plan []coordinator.PlanWorker, crashed []string) string) {
	j.OnStep = func(st coordinator.StepReport) {
		m.mu.Lock()
		defer m.mu.Unlock()
		m.at[st.Step], m.iterS[st.Step] = time.Now(), st.IterationS
		if st.CheckpointS > 0 {
			m.ckptS = append(m.ckptS, st.CheckpointS)
		}
	}
	j.OnCrash = func(node string, at time.Time) {
		m.mu.Lock()
		defer m.mu.Unlock()
		m.crashes = append(m.crashes, crash{node, at})
	}
	j.Crash = func(step int64, plan []coordinator.PlanWorker) []string {
		m.mu.Lock()
		defer m.mu.Unlock()
		if step == 1 {
			m.first = plan
		}
		if !slices.Contains(after, step) {
			return nil
		}
		v := victim(plan, m.crashed)
		if v == "" {
			return nil
		}
		m.crashed = append(m.crashed, v)
		fmt.Fprintf(os.Stderr, "  crashing %s during step %d\n", v, step+1)
		return []string{v}
	}
}

// start is the start of step 1 (its commit less its wall time): time 0
// of the trace and of the simulation.
func (m *measured) start() time.Time {
	return m.at[1].Add(-time.Duration(m.iterS[1] * float64(time.Second)))
}

// trace writes the crashes as a `sim --failures` trace to path and reads
// it back the way the simulator does.
func (m *measured) trace(path string, nodes []string, about string) (*failures.Trace, error) {
	var b strings.Builder
	fmt.Fprintf(&b, "# %s\n# Crashes as they happened, from the start of step 1.\nevents:\n", about)
	t0 := m.start()
	for _, c := range m.crashes {
		fmt.Fprintf(&b, "  - {at: %s, node: %s, kind: crash}\n", c.at.Sub(t0).Round(time.Millisecond), c.node)
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		return nil, err
	}
	return failures.LoadTrace(path, nodes)
}

// costs are the recovery costs the run measured: detection (crash to the
// coordinator noticing), its recovery (detection to the new plan
// installed, a restore's checkpoint load included, less the wait for a
// replacement, which the simulator prices itself) and the checkpoint
// write.
func (m *measured) costs(replaceWaitS float64) failures.Costs {
	var det, rec []float64
	for i, r := range m.sum.Recoveries {
		if r.Kind != "repath" && r.Kind != "restore" {
			continue
		}
		if i < len(m.crashes) {
			det = append(det, r.DetectedAt.Sub(m.crashes[i].at).Seconds())
		}
		s := r.RecoveryS
		if r.Kind == "restore" && r.Workers < len(m.first) {
			s = max(0, s-replaceWaitS) // it waited for a replacement
		}
		rec = append(rec, s)
	}
	return failures.Costs{DetectS: mean(det), LeaseTTLS: 5, PlanS: mean(rec), CheckpointS: mean(m.ckptS), ReplaceWaitS: replaceWaitS}
}

func mean(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := 0.0
	for _, x := range v {
		s += x
	}
	return s / float64(len(v))
}

// phase is a range of steps: throughput over the commits after from up
// to to.
type phase struct {
	name     string
	from, to int64
}

// phases: before (steps 2..first), the failure window (from the commit
// before the first crashed step to that of the step after the last
// crashed one), after.
func phases(after []int64, steps int) []phase {
	first, last := after[0], after[len(after)-1]+2
	return []phase{{"before", 1, first}, {"failure window", first, last}, {"after", last, int64(steps)}}
}

type row struct {
	cse, phase, steps string
	meas, sim         float64
}

// compare prints the recoveries side by side and returns the phase rows.
func compare(name string, m *measured, o *failures.Outcome, tokens float64, steps int, after []int64) ([]row, error) {
	if o.Committed != steps {
		return nil, fmt.Errorf("%s: the simulation committed %d steps, not %d (%s)", name, o.Committed, steps, o.Stopped)
	}
	fmt.Printf("%s recoveries, measured:", name)
	t0 := m.start()
	for i, r := range m.sum.Recoveries {
		c := ""
		if i < len(m.crashes) {
			c = fmt.Sprintf(" crash at %.2f s,", m.crashes[i].at.Sub(t0).Seconds())
		}
		fmt.Printf(" [step %d%s %s detected at %.2f s, recovered in %.3f s, first commit %.3f s after detection, %d workers]",
			r.Step, c, r.Kind, r.DetectedAt.Sub(t0).Seconds(), r.RecoveryS, r.ToCommitS, r.Workers)
	}
	fmt.Printf("\n%s recoveries, simulated:", name)
	for _, r := range o.Recoveries {
		fmt.Printf(" [%s at %.2f s: %s in %.3f s, %d replayed, %d workers]", r.Node, r.AtS, r.Action, r.RecoverS, r.Replayed, r.Workers)
	}
	fmt.Println()
	simAt := func(k int64) float64 {
		if k == 0 {
			return 0
		}
		return o.Timeline[k-1].T
	}
	t := func(k int64) float64 { return m.at[k].Sub(t0).Seconds() }
	var rows []row
	for _, p := range phases(after, steps) {
		if p.to <= p.from {
			continue
		}
		n := float64(p.to-p.from) * tokens
		rows = append(rows, row{cse: name, phase: p.name, steps: fmt.Sprintf("%d-%d", p.from+1, p.to),
			meas: n / (t(p.to) - t(p.from)), sim: n / (simAt(p.to) - simAt(p.from))})
	}
	return rows, nil
}

func run(cases []string, out, corpus string, maxBytes int64, replaceWait time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	start := time.Now()
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	var rows []row
	var geo *localrun.Geo
	for _, c := range cases {
		var rs []row
		var err error
		switch c {
		case "skip", "vacate":
			if geo == nil {
				if geo, err = localrun.NewGeo(ctx, skipTrain(), 0.05, out, corpus, maxBytes, 1); err != nil {
					return err
				}
				if err := localrun.WriteYAML(filepath.Join(out, "calibration-geo.yaml"), geo.Costs); err != nil {
					return err
				}
			}
			rs, err = skipCase(ctx, geo, c == "vacate", out)
		case "gpipe":
			rs, err = gpipeCase(ctx, out, corpus, maxBytes, replaceWait)
		}
		if err != nil {
			return fmt.Errorf("%s: %w", c, err)
		}
		rows = append(rows, rs...)
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "case\tphase\tsteps\tmeasured tokens/s\tsimulated tokens/s\tsim/measured\t\n")
	worst := 0.0
	for _, r := range rows {
		ratio := r.sim / r.meas
		if r.phase != "before" {
			worst = max(worst, math.Abs(ratio-1))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%.0f\t%.0f\t%.2f\t\n", r.cse, r.phase, r.steps, r.meas, r.sim, ratio)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	verdict := "within"
	if worst > 0.15 {
		verdict = "outside"
	}
	fmt.Printf("largest deviation in the failure window and after: %.0f%% (%s 15%%); %.0f s in all\n", 100*worst, verdict, time.Since(start).Seconds())
	return nil
}

// skipTrain is bench/skipfailures' model and microbatches.
func skipTrain() model.TrainConfig {
	return model.TrainConfig{Model: model.Config{Layers: 6, Dim: 8, Heads: 2, Ctx: 32, Seed: 1}, Microbatches: 30, MicrobatchSize: 16}
}

// vacatedStage is the stage the vacate case empties (as skipfailures').
const vacatedStage = 3

// skipCase runs bench/skipfailures' faulty run (default or -vacate) and
// simulates it.
func skipCase(ctx context.Context, geo *localrun.Geo, vacate bool, out string) ([]row, error) {
	const steps, every = 30, 5
	name, after, stage := "skip", []int64{8, 11, 14, 17}, -1
	if vacate {
		name, after, stage = "vacate", []int64{8, 11, 14}, vacatedStage
	}
	tc := geo.Train
	fmt.Fprintf(os.Stderr, "%s: training SkipPipe for %d steps with %d crashes...\n", name, steps, len(after))
	m := newMeasured()
	j := geo.Job("run-"+name, coordinator.SkipPipe, steps, every)
	m.hook(&j, after, func(plan []coordinator.PlanWorker, crashed []string) string {
		return localrun.Victim(plan, crashed, stage)
	})
	sum, err := localrun.Run(ctx, j)
	if err != nil {
		return nil, err
	}
	m.sum = sum
	if len(m.crashes) != len(after) {
		return nil, fmt.Errorf("crashed %d workers, wanted %d", len(m.crashes), len(after))
	}
	trace, err := m.trace(filepath.Join(out, name+"-trace.yaml"), geo.Nodes,
		fmt.Sprintf("bench/simfailures %s: SkipPipe on %s, %s", name, geo.Cluster.Name, time.Now().UTC().Format(time.DateOnly)))
	if err != nil {
		return nil, err
	}
	planner, k, err := skipPlanner(geo, m.first)
	if err != nil {
		return nil, err
	}
	costs := m.costs(0)
	costs.LeaseTTLS = 5
	tp := &timedPlanner{Planner: planner}
	job := failures.Job{Name: "skippipe", Planner: tp, Cluster: k, Nodes: geo.Nodes, CheckpointEvery: every, Costs: costs, Iterations: steps}
	o, err := failures.Run(job, trace)
	if err != nil {
		return nil, err
	}
	printCosts(name, costs, o)
	if tp.n > 0 {
		fmt.Printf("%s: the coordinator's re-path planner (simulator objective) took %.3f s per re-path here (mean of %d), of the measured recovery\n", name, tp.s/float64(tp.n), tp.n)
	}
	return compare(name, m, o, float64(tc.Microbatches*tc.MicrobatchSize*tc.Model.Ctx), steps, after)
}

// skipPlanner is the coordinator's SkipPipe planner input for geo (its
// calibrated costs, the all-reduces sized for SkipPipe's head-first
// split, the simulator as the objective) with the placement the run
// started on, and the cost model the simulation prices with.
func skipPlanner(geo *localrun.Geo, first []coordinator.PlanWorker) (failures.SkipPipe, *sim.Cluster, error) {
	var sp failures.SkipPipe
	tc := geo.Train
	k, err := geo.Costs.Clone()
	if err != nil {
		return sp, nil, err
	}
	sizes := geo.Cluster.Workload.StageNodes
	if k.Compute.StageGradientBytes, err = costmodel.GradientBytesOfStages(tc.Model, len(sizes), model.HeadFirst); err != nil {
		return sp, nil, err
	}
	mem := 0
	if k.Workload != nil {
		mem = k.Workload.Memory
	}
	cfg, err := costmodel.SkipPipeInput(k, costmodel.SkipPipeJob{Names: geo.Nodes, StageSizes: sizes, Microbatches: tc.Microbatches,
		Layers: tc.Model.Layers, Samples: tc.MicrobatchSize, PayloadBytes: float64(tc.MicrobatchSize) * costmodel.ActivationBytes(tc.Model), Memory: mem})
	if err != nil {
		return sp, nil, err
	}
	cfg.CollisionAware, cfg.Seed = true, int64(tc.Model.Seed)
	cfg.Objective = func(p *scheduler.Plan) float64 {
		if _, err := costmodel.ChooseAllReduce(p, k); err != nil {
			return math.Inf(1)
		}
		r, err := sim.Run(p, k, sim.Options{})
		if err != nil {
			return math.Inf(1)
		}
		return r.IterationTimeS
	}
	idx := map[string]int{}
	for i, n := range geo.Nodes {
		idx[n] = i
	}
	cfg.Partition = make([][]int, len(sizes))
	for _, w := range first {
		i, ok := idx[w.Name]
		if !ok || len(w.Stages) != 1 || w.Stages[0] >= len(sizes) {
			return sp, nil, fmt.Errorf("the run's first plan has worker %s on stages %v, not one stage of the cluster", w.Name, w.Stages)
		}
		cfg.Partition[w.Stages[0]] = append(cfg.Partition[w.Stages[0]], i)
	}
	p, _, err := scheduler.PlanSkipPipeVariant(scheduler.SkipPipeCA, cfg)
	if err != nil {
		return sp, nil, err
	}
	return failures.SkipPipe{Variant: scheduler.SkipPipeCA, Base: cfg, Layers: p.Stages, Microbatches: len(p.Microbatches),
		Cache: map[string]*scheduler.Plan{}}, k, nil
}

// timedPlanner times the re-plans of a simulation: the same planner the
// coordinator runs, on the same machine.
type timedPlanner struct {
	failures.Planner
	n int
	s float64
}

func (t *timedPlanner) OnPartition(parts [][]string) (*scheduler.Plan, error) {
	start := time.Now()
	p, err := t.Planner.OnPartition(parts)
	t.s += time.Since(start).Seconds()
	t.n++
	return p, err
}

func printCosts(name string, c failures.Costs, o *failures.Outcome) {
	fmt.Printf("%s: simulated with the run's measured costs: detection %.3f s, recovery %.3f s, checkpoint write %.3f s, replacement wait %.1f s; failure-free iteration %.3f s\n",
		name, c.DetectS, c.PlanS, c.CheckpointS, c.ReplaceWaitS, o.FailureFreeS)
}

// gpipeTrain is a small GPipe job whose compute stays a minor share of
// an iteration over the emulated links.
func gpipeTrain() model.TrainConfig {
	return model.TrainConfig{Model: model.Config{Layers: 4, Dim: 16, Heads: 2, Ctx: 32, Seed: 1}, Microbatches: 8, MicrobatchSize: 4}
}

// gpipeCluster is 8 nodes of the skippipe-geo preset (4 stages of 2),
// links scaled for the model.
func gpipeCluster(tc model.TrainConfig) (*sim.Cluster, []string, error) {
	c := sim.SkipPipeGeo()
	c.Nodes = c.Nodes[:8]
	c.Workload.StageNodes = []int{2, 2, 2, 2}
	c.Workload.MicrobatchesPerOrigin = tc.Microbatches / 2
	if err := c.Validate(); err != nil {
		return nil, nil, err
	}
	sc, err := coordinator.ScaleLinks(c, 0.02, tc.Model, tc.MicrobatchSize)
	if err != nil {
		return nil, nil, err
	}
	var names []string
	for _, n := range sc.Nodes {
		names = append(names, n.Name)
	}
	return sc, names, nil
}

// gpipeCase calibrates on a short GPipe run, then kills a worker of stage
// 1 during step 7 of a checkpointed run (no spare: the coordinator
// restores on the replica left) and simulates it.
func gpipeCase(ctx context.Context, out, corpus string, maxBytes int64, replaceWait time.Duration) ([]row, error) {
	const steps, every, stages = 14, 4, 4
	after := []int64{6}
	tc := gpipeTrain()
	cl, names, err := gpipeCluster(tc)
	if err != nil {
		return nil, err
	}
	job := func(name string, costs *sim.Cluster, n, ckpt int) localrun.Job {
		return localrun.Job{Name: name, Dir: out, Schedule: "gpipe", Nodes: names, Stages: stages, Train: tc, Steps: n,
			Cluster: cl, Costs: costs, CheckpointEvery: ckpt, CorpusDir: corpus, MaxCorpusBytes: maxBytes, ReplaceWait: replaceWait}
	}
	fmt.Fprintf(os.Stderr, "gpipe: calibrating (4 steps)...\n")
	calib, err := localrun.Run(ctx, job("gpipe-calibrate", nil, 4, 0))
	if err != nil {
		return nil, err
	}
	k := calib.CostModel
	if k == nil {
		return nil, fmt.Errorf("the calibration run measured nothing")
	}
	if err := localrun.WriteYAML(filepath.Join(out, "calibration-gpipe.yaml"), k); err != nil {
		return nil, err
	}
	fmt.Fprintf(os.Stderr, "gpipe: training for %d steps, a worker of stage 1 crashes during step %d...\n", steps, after[0]+1)
	m := newMeasured()
	j := job("run-gpipe", k, steps, every)
	m.hook(&j, after, func(plan []coordinator.PlanWorker, crashed []string) string {
		return localrun.Victim(plan, crashed, 1)
	})
	if m.sum, err = localrun.Run(ctx, j); err != nil {
		return nil, err
	}
	if len(m.crashes) != 1 || len(m.sum.Recoveries) == 0 || m.sum.Recoveries[0].Kind != "restore" {
		return nil, fmt.Errorf("wanted one crash and a restore, got crashes %v and recoveries %+v", m.crashes, m.sum.Recoveries)
	}
	trace, err := m.trace(filepath.Join(out, "gpipe-trace.yaml"), names,
		fmt.Sprintf("bench/simfailures gpipe: GPipe 4 stages x 2 on %s, %s", cl.Name, time.Now().UTC().Format(time.DateOnly)))
	if err != nil {
		return nil, err
	}
	costs := m.costs(replaceWait.Seconds())
	sj := failures.Job{Name: "gpipe", Planner: failures.Classic{Schedule: "gpipe", Spec: scheduler.Spec{Stages: stages,
		Microbatches: tc.Microbatches, Layers: tc.Model.Layers, Samples: tc.MicrobatchSize}},
		Cluster: k, Nodes: names, CheckpointEvery: every, Costs: costs, Iterations: steps}
	o, err := failures.Run(sj, trace)
	if err != nil {
		return nil, err
	}
	printCosts("gpipe", costs, o)
	return compare("gpipe", m, o, float64(tc.Microbatches*tc.MicrobatchSize*tc.Model.Ctx), steps, after)
}
