// Command simfailures checks the failure simulator (sim/failures, the code
// behind `stagecoach sim --failures`) against real runs that lose
// workers. For each case it runs the real job on loopback
// (bench/internal/localrun: real coordinator, gRPC workers emulating the
// links), records the failure trace as it happened (each crash's time and
// node; time 0 is the commit of step 1 less one simulated iteration, as
// step 1 also warms up), writes it as a `sim --failures` trace, and
// simulates the same job through it under the cost model the coordinator
// planned with (and under the one the run calibrated from its own steps),
// with the recovery costs the run measured: detection, the coordinator's
// recovery (probe, plan, install; for a restore the checkpoint load) and
// the checkpoint write. It prints, per phase (before the failures, the
// failure window, after it; one time interval for the run and its
// simulations), the measured and simulated throughput and their ratio,
// and the time each crash cost in both.
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
	"stagecoach/internal/etcdx"
	"stagecoach/model"
	"stagecoach/planner"
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

// start is time 0 of the trace and of the simulation: the commit of
// step 1 less one failure-free iteration of the simulation (firstS).
// Step 1 also opens the workers' streams and warms up; the simulator
// does not price that, and a failure comparison should not include it.
func (m *measured) start(firstS float64) time.Time {
	return m.at[1].Add(-time.Duration(firstS * float64(time.Second)))
}

// trace writes the crashes as a `sim --failures` trace to path and reads
// it back the way the simulator does.
func (m *measured) trace(path string, nodes []string, firstS float64, about string) (*failures.Trace, error) {
	var b strings.Builder
	fmt.Fprintf(&b, "# %s\n# Crashes as they happened; time 0 is the commit of step 1 less %.3f s (one simulated iteration).\nevents:\n", about, firstS)
	t0 := m.start(firstS)
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
	return failures.Costs{DetectS: mean(det), LeaseTTLS: float64(etcdx.DefaultTTL), PlanS: mean(rec), CheckpointS: mean(m.ckptS), ReplaceWaitS: replaceWaitS}
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

// span is a range of steps: throughput over the commits after from up
// to to.
type span struct{ from, to int }

// phases splits a run's commits (commits[k-1] is step k's, in seconds
// from time 0) by the crash times: before (after step 1, up to the last
// commit before the first crash), the failure window (from there to the
// second commit after the last crash: the retried step and one more),
// after (from there to the end).
func phases(commits []float64, crashes []float64) [3]span {
	a := 1
	for k, t := range commits {
		if t <= crashes[0] {
			a = max(a, k+1)
		}
	}
	b := len(commits)
	for k, t := range commits {
		if t > crashes[len(crashes)-1] {
			b = min(k+2, len(commits))
			break
		}
	}
	return [3]span{{1, a}, {a, b}, {b, len(commits)}}
}

// progress is the steps a timeline has done at time t: its commits
// counted, the step under way as the part of the gap to its commit that
// has passed.
func progress(commits []float64, t float64) float64 {
	prev := 0.0
	for k, c := range commits {
		if t < c {
			return float64(k) + (t-prev)/(c-prev)
		}
		prev = c
	}
	return float64(len(commits))
}

// lostPerCrash is the mean time each crash cost a timeline: the two
// gaps between commits from the last commit before it (the lost part of
// the iteration, detection, recovery, any replay, the retried step, which
// ends in the second gap when the crash came after an iteration ended but
// before its commit, during a checkpoint write) less two median gaps of
// the steps no crash touched (step 1 left out). Unlike throughput, it
// does not depend on how fast the iterations run.
func lostPerCrash(commits, crashes []float64) float64 {
	hit := map[int]bool{}
	var lost []float64
	for _, x := range crashes {
		i := 0 // commits[i-1] is the last commit before x (i = 0: none)
		for i < len(commits) && commits[i] <= x {
			i++
		}
		if i == 0 || i+1 >= len(commits) {
			continue
		}
		hit[i], hit[i+1] = true, true
		lost = append(lost, commits[i+1]-commits[i-1])
	}
	var gaps []float64
	for k := 2; k < len(commits); k++ {
		if !hit[k] {
			gaps = append(gaps, commits[k]-commits[k-1])
		}
	}
	if len(lost) == 0 || len(gaps) == 0 {
		return 0
	}
	slices.Sort(gaps)
	return mean(lost) - 2*gaps[len(gaps)/2]
}

type row struct {
	cse, phase string
	// steps are the measured run's in the phase; interval the phase's
	// seconds from time 0.
	steps, interval string
	// sim is under the cost model the run planned with, own under the
	// one it wrote (calibrated from its own last plan's steps).
	meas, sim, own float64
}

// result is a case's comparison.
type result struct {
	rows []row
	loss lossRow
}

// lossRow is what a case's crashes cost, measured and simulated.
type lossRow struct {
	cse            string
	crashes        int
	meas, sim, own float64
}

// compare prints the recoveries side by side and returns the phase rows.
func compare(name string, m *measured, o, own *failures.Outcome, tokens float64, steps int, firstS float64) ([]row, lossRow, error) {
	for _, x := range []*failures.Outcome{o, own} {
		if x.Committed != steps {
			return nil, lossRow{}, fmt.Errorf("%s: the simulation committed %d steps, not %d (%s)", name, x.Committed, steps, x.Stopped)
		}
	}
	t0 := m.start(firstS)
	var crashes []float64
	for _, c := range m.crashes {
		crashes = append(crashes, c.at.Sub(t0).Seconds())
	}
	fmt.Printf("%s recoveries, measured:", name)
	for i, r := range m.sum.Recoveries {
		c := ""
		if i < len(crashes) {
			c = fmt.Sprintf(" crash at %.2f s,", crashes[i])
		}
		fmt.Printf(" [step %d%s %s detected at %.2f s, recovered in %.3f s, first commit %.3f s after detection, %d workers]",
			r.Step, c, r.Kind, r.DetectedAt.Sub(t0).Seconds(), r.RecoveryS, r.ToCommitS, r.Workers)
	}
	fmt.Printf("\n%s recoveries, simulated:", name)
	for _, r := range o.Recoveries {
		fmt.Printf(" [%s at %.2f s: %s in %.3f s, %d replayed, %d workers]", r.Node, r.AtS, r.Action, r.RecoverS, r.Replayed, r.Workers)
	}
	fmt.Println()
	var real, simd, ownd []float64
	for k := 1; k <= steps; k++ {
		real = append(real, m.at[int64(k)].Sub(t0).Seconds())
		simd = append(simd, o.Timeline[k-1].T)
		ownd = append(ownd, own.Timeline[k-1].T)
	}
	// Each phase is a time interval, the same for every timeline: the
	// measured run's commits around the crashes bound it (the end clamped
	// to the earliest end of a run).
	end := min(real[steps-1], simd[steps-1], ownd[steps-1])
	pr := phases(real, crashes)
	var rows []row
	for i, name2 := range []string{"before", "failure window", "after"} {
		t1, t2 := real[pr[i].from-1], min(real[pr[i].to-1], end)
		if !(t2 > t1) {
			continue
		}
		rate := func(c []float64) float64 { return (progress(c, t2) - progress(c, t1)) * tokens / (t2 - t1) }
		rows = append(rows, row{cse: name, phase: name2, steps: fmt.Sprintf("%d-%d", pr[i].from+1, pr[i].to),
			interval: fmt.Sprintf("%.1f-%.1f", t1, t2), meas: rate(real), sim: rate(simd), own: rate(ownd)})
	}
	return rows, lossRow{cse: name, crashes: len(crashes), meas: lostPerCrash(real, crashes),
		sim: lostPerCrash(simd, crashes), own: lostPerCrash(ownd, crashes)}, nil
}

func run(cases []string, out, corpus string, maxBytes int64, replaceWait time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	start := time.Now()
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	var rows []row
	var losses []lossRow
	var geo *localrun.Geo
	for _, c := range cases {
		var res *result
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
			res, err = skipCase(ctx, geo, c == "vacate", out)
		case "gpipe":
			res, err = gpipeCase(ctx, out, corpus, maxBytes, replaceWait)
		}
		if err != nil {
			return fmt.Errorf("%s: %w", c, err)
		}
		rows, losses = append(rows, res.rows...), append(losses, res.loss)
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "case\tphase\tsteps\tseconds\tmeasured tokens/s\tsimulated tokens/s\tsim/measured\tsimulated, run's own calibration\tsim/measured\t\n")
	worst, worstOwn := 0.0, 0.0
	for _, r := range rows {
		ratio, own := r.sim/r.meas, r.own/r.meas
		if r.phase != "before" {
			worst, worstOwn = max(worst, math.Abs(ratio-1)), max(worstOwn, math.Abs(own-1))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%.0f\t%.0f\t%.2f\t%.0f\t%.2f\t\n", r.cse, r.phase, r.steps, r.interval, r.meas, r.sim, ratio, r.own, own)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	tw = tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "case\tcrashes\tmeasured s lost per crash\tsimulated\tsim/measured\tsimulated, run's own calibration\tsim/measured\t\n")
	for _, l := range losses {
		fmt.Fprintf(tw, "%s\t%d\t%.3f\t%.3f\t%.2f\t%.3f\t%.2f\t\n", l.cse, l.crashes, l.meas, l.sim, l.sim/l.meas, l.own, l.own/l.meas)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	verdict := func(d float64) string {
		if d > 0.15 {
			return "outside"
		}
		return "within"
	}
	fmt.Printf("largest deviation in the failure window and after: %.0f%% under the calibration planned with (%s 15%%), %.0f%% under the run's own (%s 15%%); %.0f s in all\n",
		100*worst, verdict(worst), 100*worstOwn, verdict(worstOwn), time.Since(start).Seconds())
	fmt.Println("steps: the measured run's steps in each phase, split at its commits around the crashes; seconds: the phase from time 0, the same for every timeline (throughput is the steps done in it, the one under way counted in part); the run's own calibration: what the coordinator calibrated from its last plan's steps (the machine's load during the run); s lost per crash: the two gaps between commits from the last one before a crash less two of the timeline's median steps (what the failure cost, whatever the iteration time)")
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
func skipCase(ctx context.Context, geo *localrun.Geo, vacate bool, out string) (*result, error) {
	const steps, every = 30, 5
	name, after, stage := "skip", []int64{8, 11, 14, 17}, -1
	if vacate {
		name, after, stage = "vacate", []int64{8, 11, 14}, vacatedStage
	}
	tc := geo.Train
	fmt.Fprintf(os.Stderr, "%s: training SkipPipe for %d steps with %d crashes...\n", name, steps, len(after))
	m := newMeasured()
	j := geo.Job("run-"+name, planner.SkipPipe, steps, every)
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
	pl, k, err := skipPlanner(geo)
	if err != nil {
		return nil, err
	}
	nodes := slices.Sorted(slices.Values(geo.Nodes)) // the coordinator plans on its members by name
	job := failures.Job{Name: planner.SkipPipe, Planner: pl, Cluster: k, Nodes: nodes, CheckpointEvery: every, Costs: m.costs(0), Iterations: steps}
	if err := samePlacement(pl, nodes, m.first); err != nil {
		return nil, err
	}
	if m.sum.CostModel == nil {
		return nil, fmt.Errorf("the run wrote no calibration")
	}
	wrote, err := headFirst(m.sum.CostModel, tc, len(geo.Cluster.Workload.StageNodes))
	if err != nil {
		return nil, err
	}
	res, err := simulate(name, m, job, wrote, filepath.Join(out, name+"-trace.yaml"),
		fmt.Sprintf("bench/simfailures %s: SkipPipe on %s, %s", name, geo.Cluster.Name, time.Now().UTC().Format(time.DateOnly)),
		float64(tc.Microbatches*tc.MicrobatchSize*tc.Model.Ctx))
	if err != nil {
		return nil, err
	}
	if n, secs, err := timeRepaths(pl); err != nil {
		return nil, err
	} else if n > 0 {
		fmt.Printf("%s: the re-path planner (the coordinator's, simulator objective) takes %.3f s per re-path in this process (mean of %d)\n", name, secs/float64(n), n)
	}
	return res, nil
}

// simulate runs job (steps and costs set) through m's crashes, written
// to tracePath as a `sim --failures` trace and read back, and compares.
// The simulation runs twice: priced with job.Cluster (the cost model the
// run planned with) and with wrote (the one the run calibrated from its
// own steps); the plans are the same.
func simulate(name string, m *measured, job failures.Job, wrote *sim.Cluster, tracePath, about string, tokens float64) (*result, error) {
	probe := job
	probe.Iterations = 1
	p, err := failures.Run(probe, nil)
	if err != nil {
		return nil, err
	}
	firstS := p.FailureFreeS
	trace, err := m.trace(tracePath, job.Nodes, firstS, about)
	if err != nil {
		return nil, err
	}
	o, err := failures.Run(job, trace)
	if err != nil {
		return nil, err
	}
	job.Cluster = wrote
	own, err := failures.Run(job, trace)
	if err != nil {
		return nil, fmt.Errorf("under the run's own calibration: %w", err)
	}
	c := job.Costs
	fmt.Printf("%s: simulated with the run's measured costs: detection %.3f s, recovery %.3f s, checkpoint write %.3f s, replacement wait %.1f s; failure-free iteration %.3f s; trace %s\n",
		name, c.DetectS, c.PlanS, c.CheckpointS, c.ReplaceWaitS, o.FailureFreeS, tracePath)
	rows, loss, err := compare(name, m, o, own, tokens, job.Iterations, firstS)
	if err != nil {
		return nil, err
	}
	return &result{rows, loss}, nil
}

// skipPlanner is the coordinator's planner for geo's SkipPipe job (the
// snapshot it plans from: the calibrated costs it started with, the
// cluster's stage sizes, the simulator as the objective), and the cost
// model the simulation prices with (the calibration, all-reduces sized
// for SkipPipe's head-first split, as the planner sizes them).
func skipPlanner(geo *localrun.Geo) (failures.Planner, *sim.Cluster, error) {
	tc := geo.Train
	sizes := geo.Cluster.Workload.StageNodes
	k, err := headFirst(geo.Costs, tc, len(sizes))
	if err != nil {
		return failures.Planner{}, nil, err
	}
	m := tc.Model
	snap := planner.Snapshot{Schedule: planner.SkipPipe, Costs: geo.Costs,
		Rules: planner.Rules{Stages: len(sizes), Workers: len(geo.Nodes), StageSizes: sizes, Microbatches: tc.Microbatches,
			Layers: m.Layers, Samples: tc.MicrobatchSize, Seed: int64(m.Seed), Model: &m},
		Simulate: func(p *scheduler.Plan, c *costmodel.Cluster) (float64, error) {
			r, err := sim.Run(p, c, sim.Options{})
			if err != nil {
				return 0, err
			}
			return r.IterationTimeS, nil
		}}
	return failures.Planner{Snapshot: snap, Cache: map[string]*scheduler.Plan{}}, k, nil
}

// headFirst is cost model c with the all-reduces sized for SkipPipe's
// split of tc's model over stages (embedding and head on stage 0), as the
// planner sizes them whatever plan calibrated.
func headFirst(c *sim.Cluster, tc model.TrainConfig, stages int) (*sim.Cluster, error) {
	k, err := c.Clone()
	if err != nil {
		return nil, err
	}
	if k.Compute.StageGradientBytes, err = costmodel.GradientBytesOfStages(tc.Model, stages, model.HeadFirst); err != nil {
		return nil, err
	}
	return k, nil
}

// samePlacement checks that the planner's first plan on nodes places them
// as the run's first plan did.
func samePlacement(pl failures.Planner, nodes []string, first []coordinator.PlanWorker) error {
	s := pl.Snapshot
	s.Members = nodes
	p, err := planner.Plan(s)
	if err != nil {
		return err
	}
	stage := map[string]int{}
	for _, w := range p.Workers {
		stage[w.Node] = w.Stages[0]
	}
	for _, w := range first {
		if st, ok := stage[w.Name]; !ok || len(w.Stages) != 1 || w.Stages[0] != st {
			return fmt.Errorf("the run placed %s on stages %v, the planner here on %d", w.Name, w.Stages, st)
		}
	}
	return nil
}

// timeRepaths plans again, timed, every re-path the simulation made (the
// plans in pl's cache on fewer nodes than configured).
func timeRepaths(pl failures.Planner) (int, float64, error) {
	n, secs := 0, 0.0
	for _, p := range pl.Cache {
		if len(p.Workers) >= pl.Snapshot.Rules.Workers {
			continue
		}
		s := pl.Snapshot
		s.Parts = make([][]string, len(p.Stages))
		for st, ws := range p.StageWorkers() {
			for _, w := range ws {
				s.Parts[st] = append(s.Parts[st], p.Workers[w].Node)
			}
		}
		start := time.Now()
		if _, err := planner.Plan(s); err != nil {
			return 0, 0, err
		}
		secs += time.Since(start).Seconds()
		n++
	}
	return n, secs, nil
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
func gpipeCase(ctx context.Context, out, corpus string, maxBytes int64, replaceWait time.Duration) (*result, error) {
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
	sj := failures.Job{Name: "gpipe", Planner: failures.Planner{Snapshot: planner.Snapshot{Schedule: "gpipe", Rules: planner.Rules{
		Stages: stages, Microbatches: tc.Microbatches, Layers: tc.Model.Layers, Samples: tc.MicrobatchSize}}},
		Cluster: k, Nodes: slices.Sorted(slices.Values(names)), CheckpointEvery: every, Costs: m.costs(replaceWait.Seconds()), Iterations: steps}
	if m.sum.CostModel == nil {
		return nil, fmt.Errorf("the run wrote no calibration")
	}
	return simulate("gpipe", m, sj, m.sum.CostModel, filepath.Join(out, "gpipe-trace.yaml"),
		fmt.Sprintf("bench/simfailures gpipe: GPipe 4 stages x 2 on %s, %s", cl.Name, time.Now().UTC().Format(time.DateOnly)),
		float64(tc.Microbatches*tc.MicrobatchSize*tc.Model.Ctx))
}
