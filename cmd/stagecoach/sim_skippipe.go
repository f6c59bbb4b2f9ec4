package main

// SkipPipe modes of `stagecoach sim`: the skippipe schedules on a cluster
// whose workload names its stage sizes (e.g. --preset skippipe-geo),
// --import-skippipe to simulate the SkipPipe authors' schedule files, and
// --sweep-skip over skip ratios.

import (
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/pflag"

	"stagecoach/costmodel"
	"stagecoach/planner"
	"stagecoach/scheduler"
	"stagecoach/scheduler/skippipe"
	"stagecoach/scheduler/skippiperef"
	"stagecoach/sim"
)

type skipFlags struct {
	fs        *pflag.FlagSet
	importRef string
	forwardS  float64
	sweepSkip bool
}

var skipOpts = &skipFlags{}

// Registered from a package variable so that it precedes sim.go's init,
// which builds the command and reads the extensions' flags.
var _ = func() bool {
	x := &simExtension{
		AddFlags: func(fs *pflag.FlagSet) {
			skipOpts.fs = fs
			fs.StringVar(&skipOpts.importRef, "import-skippipe", "", "simulate the SkipPipe authors' schedule FILE (ref-baseline, ref-ca, ref-nonca, ref-random) beside Stagecoach's gpipe and skippipe")
			fs.Float64Var(&skipOpts.forwardS, "forward-s", 1.76, "with --import-skippipe: forward time of one microbatch through one stage on every node (backward 1.5x, loss 0.25x)")
			fs.BoolVar(&skipOpts.sweepSkip, "sweep-skip", false, "sweep the skip ratio (0 to 75%) on a SkipPipe cluster, writing skip-sweep.csv and skip-sweep.png to --out")
		},
		Schedules: map[string]func(env *simEnv) (*simJob, error){},
		Run:       runSkipPipeModes,
	}
	for _, name := range planner.SkipPipeNames() {
		x.Schedules[name] = func(env *simEnv) (*simJob, error) {
			cfg, err := skipConfigFromCluster(env.Cluster, env.Seed, 0)
			if err != nil {
				return nil, err
			}
			return planSkipJob(name, cfg, env.Cluster, 0)
		}
	}
	registerSimExtension(x)
	return true
}()

// needsCluster reports whether schedule name plans from a cluster's
// per-node costs (the planner registry's SkipPipe families).
func needsCluster(name string) bool {
	f, err := planner.Lookup(name)
	return err == nil && f.NeedsCluster
}

// skipPipeList resolves a schedule list with SkipPipe schedules in it,
// where "gpipe" is still read as skippipe-full (with a note on stderr).
func skipPipeList(env *simEnv, names []string) []string {
	out := make([]string, len(names))
	for i, n := range names {
		var note string
		out[i], note = planner.InSkipPipeList(n)
		if note != "" {
			fmt.Fprintf(env.Stderr, "note: %s\n", note)
		}
	}
	return out
}

// runSkipPipeModes takes over `sim` for an import, a skip sweep, or a
// schedule list with skippipe in it (then gpipe means the full pipeline
// over the SkipPipe placement and microbatches, not the classic one).
func runSkipPipeModes(env *simEnv) (bool, error) {
	if skipOpts.importRef != "" {
		return true, runSkipImport(env)
	}
	if skipOpts.sweepSkip {
		return true, runSkipSweep(env)
	}
	skip := false
	for _, s := range env.Schedules {
		skip = skip || needsCluster(s)
	}
	if !skip {
		return false, nil
	}
	cfg, err := skipConfigFromCluster(env.Cluster, env.Seed, 0)
	if err != nil {
		return true, err
	}
	placeS, err := fixPlacement(&cfg)
	if err != nil {
		return true, err
	}
	var jobs []*simJob
	for _, name := range skipPipeList(env, env.Schedules) {
		var j *simJob
		if needsCluster(name) {
			j, err = planSkipJob(name, cfg, env.Cluster, placeS)
		} else {
			j, err = buildSimJob(env, name)
		}
		if err != nil {
			return true, err
		}
		jobs = append(jobs, j)
	}
	results, err := runSimJobs(env, jobs)
	if err != nil {
		return true, err
	}
	jsonOut, _ := skipOpts.fs.GetBool("json")
	trace, _ := skipOpts.fs.GetString("trace")
	gantt, _ := skipOpts.fs.GetString("gantt")
	return true, writeSimOutputs(env, results, jsonOut, trace, gantt)
}

// fixPlacement computes the skipping placement once so that every variant
// (the full pipelines included) runs over the same one; it returns the seconds spent,
// which each variant's plan time includes.
func fixPlacement(cfg *skippipe.Config) (float64, error) {
	start := time.Now()
	parts, err := planner.Placement(planner.Snapshot{Schedule: planner.SkipPipe, Members: cfg.NodeNames, Input: cfg})
	if err != nil {
		return 0, badInput("%v", err)
	}
	cfg.Partition, cfg.RefinePlacement = parts, false
	return time.Since(start).Seconds(), nil
}

// planSkipJob plans one SkipPipe family through the planner, on cfg's
// nodes, with the simulator as the planner's objective, timing the
// planning (plus extraS already spent on a shared placement).
func planSkipJob(name string, cfg skippipe.Config, c *sim.Cluster, extraS float64) (*simJob, error) {
	start := time.Now()
	plan, err := planner.Plan(planner.Snapshot{Schedule: name, Members: cfg.NodeNames, Input: &cfg, Costs: c, Simulate: simulate})
	if err != nil {
		return nil, badInput("schedule %s: %v", name, err)
	}
	planTime := time.Since(start).Seconds() + extraS
	if err := scheduler.Validate(plan); err != nil {
		return nil, fmt.Errorf("schedule %s produced an invalid plan: %w", name, err)
	}
	if _, err := sim.ChooseAllReduce(plan, c); err != nil {
		return nil, badInput("schedule %s: %v", name, err)
	}
	return &simJob{Name: name, Plan: plan, Cluster: c, PlanTimeS: planTime}, nil
}

// simulate is the planner's simulator: one iteration's time of p on k.
func simulate(p *scheduler.Plan, k *costmodel.Cluster) (float64, error) {
	r, err := sim.Run(p, k, sim.Options{})
	if err != nil {
		return 0, err
	}
	return r.IterationTimeS, nil
}

// skipConfigFromCluster derives the planner's input from a cluster whose
// workload gives the stage sizes. pathStages 0 keeps the default rules.
// The per-node cap is the least that fits every visit, and at least the
// workload's memory: with the skippipe-geo preset that is 6 microbatches,
// the authors' 3 agents of 2.
func skipConfigFromCluster(c *sim.Cluster, seed int64, pathStages int) (skippipe.Config, error) {
	var cfg skippipe.Config
	if err := c.Validate(); err != nil {
		return cfg, badInput("%v", err)
	}
	w := c.Workload
	if w == nil || len(w.StageNodes) < 2 {
		return cfg, badInput("cluster %q has no workload.stage_nodes: skippipe schedules need the nodes per stage (try --preset skippipe-geo)", c.Name)
	}
	n := len(c.Nodes)
	total := 0
	for _, k := range w.StageNodes {
		total += k
	}
	if total != n {
		return cfg, badInput("cluster %q: workload.stage_nodes sum to %d, the cluster has %d nodes", c.Name, total, n)
	}
	ns := len(w.StageNodes)
	layers := max(w.Layers, ns)
	if layers%ns != 0 {
		return cfg, badInput("cluster %q: workload.layers %d do not split evenly over %d stages", c.Name, layers, ns)
	}
	samples := max(w.SamplesPerMicrobatch, 1)
	perOrigin := max(w.MicrobatchesPerOrigin, 1)
	if !(c.Compute.LayerForwardS > 0) {
		return cfg, badInput("cluster %q: compute.layer_forward_s must be > 0 for skippipe schedules", c.Name)
	}
	names := make([]string, n)
	for i, nd := range c.Nodes {
		names[i] = nd.Name
	}
	cfg, err := costmodel.SkipPipeInput(c, costmodel.SkipPipeJob{
		Names: names, StageSizes: w.StageNodes, Microbatches: perOrigin * w.StageNodes[0],
		Layers: layers, Samples: samples, PayloadBytes: float64(samples) * c.Compute.ActivationBytesPerSample,
		PathStages: pathStages, Memory: w.Memory,
	})
	if err != nil {
		return cfg, badInput("%v", err)
	}
	cfg.Seed, cfg.RefinePlacement = seed, true
	return cfg, nil
}

// importRow is one schedule of an import comparison.
type importRow struct {
	Schedule       string   `json:"schedule"`
	Microbatches   int      `json:"microbatches"`
	IterationTimeS float64  `json:"iteration_time_s"`
	PipelineTimeS  float64  `json:"pipeline_time_s"`
	AuthorsTimeS   float64  `json:"authors_time_s,omitempty"`
	PlanTimeS      float64  `json:"plan_time_s,omitempty"`
	Notes          []string `json:"notes,omitempty"`
}

// runSkipImport simulates the authors' plans from a schedule file beside
// Stagecoach's gpipe and skippipe over the same nodes, delays, memory,
// microbatch counts and placement.
func runSkipImport(env *simEnv) error {
	if !(skipOpts.forwardS > 0) || math.IsInf(skipOpts.forwardS, 0) {
		return badInput("--forward-s is %v, want a number > 0", skipOpts.forwardS)
	}
	data, err := os.ReadFile(skipOpts.importRef)
	if err != nil {
		return badInput("%v", err)
	}
	ref, err := skippiperef.Parse(data)
	if err != nil {
		return badInput("%s: %v", skipOpts.importRef, err)
	}
	cfg := ref.Config(skipOpts.forwardS)
	cfg.Seed = env.Seed
	c := refCluster(ref, skipOpts.forwardS)
	if err := c.Validate(); err != nil {
		return badInput("%s: %v", skipOpts.importRef, err)
	}
	var rows []importRow
	var jobs []*simJob
	add := func(name string, plan *scheduler.Plan, planTime, authors float64, notes []string) {
		jobs = append(jobs, &simJob{Name: name, Plan: plan, Cluster: c, PlanTimeS: planTime})
		rows = append(rows, importRow{Schedule: name, Microbatches: len(plan.Microbatches), AuthorsTimeS: authors, PlanTimeS: planTime, Notes: notes})
	}
	base, err := skippiperef.BaselinePlan(cfg, len(ref.Partitions[1]), 9)
	if err != nil {
		return badInput("%s: %v", skipOpts.importRef, err)
	}
	add("ref-baseline", base, 0, ref.BaselineExpectedS, []string{fmt.Sprintf("%d pipelines x 9 microbatches, as the authors' baseline", len(ref.Partitions[1]))})
	for i := range ref.Variants {
		v := &ref.Variants[i]
		plan, notes, err := ref.Plan(v, cfg)
		if err != nil {
			return badInput("%s: %v", skipOpts.importRef, err)
		}
		add(v.Name, plan, 0, v.ExpectedS, notes)
	}
	for _, name := range []string{skippipe.Full, skippipe.FullGreedy, skippipe.CA} {
		j, err := planSkipJob(name, cfg, c, 0)
		if err != nil {
			return err
		}
		add(name, j.Plan, j.PlanTimeS, 0, []string{"Stagecoach, on the file's placement"})
	}
	opts := env.Options
	opts.Detail = true
	for i, j := range jobs {
		r, err := sim.Run(j.Plan, c, opts)
		if err != nil {
			return badInput("schedule %s: %v", j.Name, err)
		}
		rows[i].IterationTimeS = r.IterationTimeS
		rows[i].PipelineTimeS = pipelineTime(r)
	}
	jsonOut, _ := skipOpts.fs.GetBool("json")
	if jsonOut {
		enc := json.NewEncoder(env.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(rows)
	}
	return writeImportTable(env.Stdout, rows)
}

// pipelineTime is the end of the last forward, backward or loss: the
// iteration without the end-of-step all-reduce, which the authors'
// simulator does not model.
func pipelineTime(r *sim.Result) float64 {
	end := 0.0
	for _, s := range r.Timeline {
		if s.Track == sim.TrackCompute && s.Action.Kind != scheduler.AllReduce && s.Action.Kind != scheduler.OptimizerStep {
			end = max(end, s.End)
		}
	}
	return end
}

// refCluster is the cost model of an authors' file: its delay matrix (pure
// delay), one layer per stage costing forwardS per microbatch, backward
// 1.5x, loss 0.25x, no optimizer cost.
func refCluster(ref *skippiperef.File, forwardS float64) *sim.Cluster {
	c := &sim.Cluster{
		Name:    "skippipe-file",
		Compute: sim.Compute{LayerForwardS: forwardS, BackwardRatio: 1.5, LossLayers: 0.25},
		Delays:  ref.Delays,
	}
	for i := range ref.Delays {
		nd := sim.Node{Name: skippiperef.NodeName(i), Speed: 1, Memory: ref.Memory}
		if i < len(ref.Locations) {
			nd.Region = ref.Locations[i]
		}
		c.Nodes = append(c.Nodes, nd)
	}
	return c
}

func writeImportTable(w io.Writer, rows []importRow) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "schedule\tmicrobatches\titeration_time_s\tpipeline_time_s\tauthors_time_s\tplan_time_s\tnotes")
	for _, r := range rows {
		authors := "-"
		if r.AuthorsTimeS > 0 {
			authors = strconv.FormatFloat(r.AuthorsTimeS, 'f', 2, 64)
		}
		plan := "-"
		if r.PlanTimeS > 0 {
			plan = strconv.FormatFloat(r.PlanTimeS, 'f', 3, 64)
		}
		fmt.Fprintf(tw, "%s\t%d\t%.2f\t%.2f\t%s\t%s\t%s\n", r.Schedule, r.Microbatches, r.IterationTimeS, r.PipelineTimeS, authors, plan, strings.Join(r.Notes, "; "))
	}
	return tw.Flush()
}

// runSkipSweep simulates every skippipe variant (and gpipe) for every path
// length from all stages down to a 75% skip ratio, writing a CSV and a
// plot of iteration time against skip ratio.
func runSkipSweep(env *simEnv) error {
	w := env.Cluster.Workload
	if w == nil || len(w.StageNodes) < 2 {
		return badInput("cluster %q has no workload.stage_nodes: --sweep-skip needs a SkipPipe cluster (try --preset skippipe-geo)", env.Cluster.Name)
	}
	ns := len(w.StageNodes)
	names := skippipe.Variants()
	if len(env.Schedules) > 0 && !(len(env.Schedules) == 2 && env.Schedules[0] == "gpipe" && env.Schedules[1] == "1f1b") {
		names = skipPipeList(env, env.Schedules) // the user chose; the default list means "not chosen"
	}
	for _, n := range names {
		if !needsCluster(n) {
			return badInput("--sweep-skip: schedule %q is not one of %s", n, strings.Join(planner.SkipPipeNames(), ", "))
		}
	}
	if err := os.MkdirAll(env.OutDir, 0o755); err != nil {
		return err
	}
	csvPath := filepath.Join(env.OutDir, "skip-sweep.csv")
	fh, err := os.Create(csvPath)
	if err != nil {
		return err
	}
	defer fh.Close()
	cw := csv.NewWriter(fh)
	_ = cw.Write([]string{"schedule", "path_stages", "skip_ratio", "memory", "iteration_time_s", "plan_time_s"})
	series := make([]sim.Series, len(names))
	var lengths []int
	for p := ns; p >= 2; p-- {
		if float64(ns-p)/float64(ns) <= 0.75+1e-9 {
			lengths = append(lengths, p)
		}
	}
	bar := newProgress(env.Stderr, len(names)*len(lengths), "sweeping skip ratio", true)
	// One placement per path length, shared by the variants.
	cfgs := make([]skippipe.Config, len(lengths))
	placeS := make([]float64, len(lengths))
	for k, p := range lengths {
		var err error
		if cfgs[k], err = skipConfigFromCluster(env.Cluster, env.Seed, p); err != nil {
			return err
		}
		if placeS[k], err = fixPlacement(&cfgs[k]); err != nil {
			return err
		}
	}
	for i, name := range names {
		series[i].Name = name
		for k, p := range lengths {
			cfg := cfgs[k]
			j, err := planSkipJob(name, cfg, env.Cluster, placeS[k])
			if err != nil {
				return err
			}
			r, err := sim.Run(j.Plan, env.Cluster, sim.Options{})
			if err != nil {
				return badInput("schedule %s with %d stages per path: %v", name, p, err)
			}
			ratio := float64(ns-p) / float64(ns)
			_ = cw.Write([]string{name, strconv.Itoa(p), fmtF(ratio), strconv.Itoa(cfg.Memory), fmtF(r.IterationTimeS), fmtF(j.PlanTimeS)})
			series[i].X = append(series[i].X, 100*ratio)
			series[i].Y = append(series[i].Y, r.IterationTimeS)
			bar.Add(1)
		}
	}
	bar.Finish()
	cw.Flush()
	if err := cw.Error(); err != nil {
		return err
	}
	pngPath := filepath.Join(env.OutDir, "skip-sweep.png")
	title := fmt.Sprintf("Iteration time vs skip ratio (%s)", env.Cluster.Name)
	if err := sim.WriteLinePlot(pngPath, title, "stages skipped per microbatch (%)", "iteration time (s)", series); err != nil {
		return err
	}
	fmt.Fprintf(env.Stdout, "wrote %s and %s\n", csvPath, pngPath)
	return nil
}
