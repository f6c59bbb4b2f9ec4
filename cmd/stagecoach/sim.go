package main

import (
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"stagecoach/planner"
	"stagecoach/scheduler"
	"stagecoach/scheduler/pytorchcsv"
	"stagecoach/sim"
)

// simEnv is what `stagecoach sim` was asked for, shared with extensions.
type simEnv struct {
	Schedules  []string
	Spec       scheduler.Spec
	Cluster    *sim.Cluster
	PresetName string
	// AllReduce overrides generated plans' all-reduce algorithm
	// (scheduler.OverrideAllReduce); "" keeps each schedule's own.
	AllReduce string
	// MaxActions bounds the plan a schedule may generate (--max-actions),
	// checked before generating it.
	MaxActions int64
	Options    sim.Options
	Seed       int64
	OutDir     string
	Stdout     io.Writer
	Stderr     io.Writer
}

// simJob is one plan to simulate on one cluster.
type simJob struct {
	Name      string
	Plan      *scheduler.Plan
	Cluster   *sim.Cluster
	PlanTimeS float64
	// Infeasible says why the plan cannot run under the limits asked for
	// (it breaks the memory bound); the job is reported, not simulated.
	Infeasible string
}

// simExtension lets another file of this command add flags, schedules or
// whole modes (imports, sweeps) to `stagecoach sim` without editing this one.
type simExtension struct {
	// AddFlags registers the extension's flags.
	AddFlags func(fs *pflag.FlagSet)
	// Schedules builds schedules the classic registry does not know, by
	// name. They run on env.Cluster unless the job names another.
	Schedules map[string]func(env *simEnv) (*simJob, error)
	// Run, when it returns handled, replaces the normal run (for modes
	// such as an import or a sweep that its flags switched on).
	Run func(env *simEnv) (handled bool, err error)
}

var simExtensions []*simExtension

func registerSimExtension(x *simExtension) { simExtensions = append(simExtensions, x) }

func init() { rootCmd.AddCommand(newSimCmd()) }

type simFlags struct {
	schedules    string
	stages       int
	microbatches int
	replicas     int
	chunks       int
	layers       int
	samples      int
	memory       int
	preset       string
	clusterFile  string
	planFile     string
	iterations   int
	overlap      bool
	jsonOut      bool
	trace        string
	gantt        string
	seed         int64
	sweep        bool
	sweepStages  string
	sweepMBs     string
	outDir       string
	progress     bool
	allReduce    string
	maxActions   int64
	memoryGiB    float64
	memoryPlot   string
	model        sim.ModelMemory
}

func newSimCmd() *cobra.Command {
	var f simFlags
	cmd := &cobra.Command{
		Use:   "sim",
		Short: "Simulate pipeline schedules against a cost model and compare them",
		Long: `Simulate one iteration (or several) of each schedule against a cluster cost
model with a discrete-event simulator, and print a comparison table.

Schedules: ` + strings.Join(scheduler.Names(), ", ") + `; on a cluster whose
workload names its stages (--preset skippipe-geo): ` + strings.Join(planner.SkipPipeNames(), ", ") + `. Clusters: --preset homogeneous|skippipe-geo or
--cluster FILE (YAML). A plan written by 'stagecoach plan' runs with --plan.`,
		Example: `  stagecoach sim --schedule gpipe,1f1b,zb-h1 --stages 4 --microbatches 8
  stagecoach sim --schedule 1f1b --stages 8 --microbatches 32 --trace out/1f1b.json --gantt out/1f1b.png
  stagecoach sim --sweep --schedule gpipe,1f1b --sweep-stages 4,8 --sweep-microbatches 1,2,4,8,16,32,64`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runSim(cmd, &f) },
	}
	fs := cmd.Flags()
	fs.StringVar(&f.schedules, "schedule", "gpipe,1f1b", "comma-separated schedules to compare")
	fs.IntVar(&f.stages, "stages", 4, "pipeline depth p (ranks)")
	fs.IntVar(&f.microbatches, "microbatches", 8, "microbatches per iteration m")
	fs.IntVar(&f.replicas, "replicas", 1, "data-parallel replicas of each stage")
	fs.IntVar(&f.chunks, "chunks", 0, "model chunks per worker for the looped schedules interleaved, interleaved-zb and looped-bfs (0: their default, 2; the V schedules hold 2)")
	fs.IntVar(&f.layers, "layers", 0, "model layers (0: one per stage)")
	fs.IntVar(&f.samples, "samples", 1, "samples per microbatch")
	fs.IntVar(&f.memory, "memory", 0, "activation memory per worker in microbatches (0: unbounded); a shorthand for --memory-gib")
	fs.Float64Var(&f.memoryGiB, "memory-gib", 0, "device memory of every node in GiB, overriding the cluster's memory_gib (0: the cluster's, or unbounded)")
	fs.StringVar(&f.memoryPlot, "memory-plot", "", "write each worker's memory over time (.png or .svg); with several schedules, one file each")
	registerModelMemoryFlags(fs, &f.model, "the cluster's model, else ")
	fs.StringVar(&f.preset, "preset", "homogeneous", "built-in cluster: "+strings.Join(sim.PresetNames(), ", "))
	fs.StringVar(&f.clusterFile, "cluster", "", "cluster cost model YAML (overrides --preset)")
	fs.StringVar(&f.planFile, "plan", "", "simulate this plan JSON instead of generating schedules")
	fs.IntVar(&f.iterations, "iterations", 1, "iterations to run back to back")
	fs.BoolVar(&f.overlap, "overlap", false, "no barrier between iterations (zero-bubble overlap)")
	fs.BoolVar(&f.jsonOut, "json", false, "print results as a JSON array")
	fs.StringVar(&f.trace, "trace", "", "write a Chrome trace-event file (open in Perfetto)")
	fs.StringVar(&f.gantt, "gantt", "", "write a Gantt chart (.png or .svg); with several schedules, one file each")
	fs.Int64Var(&f.seed, "seed", 1, "seed for randomised schedules")
	fs.BoolVar(&f.sweep, "sweep", false, "sweep stages x microbatches, writing sweep.csv and sweep.png to --out")
	fs.StringVar(&f.sweepStages, "sweep-stages", "2,4,8", "stages for --sweep")
	fs.StringVar(&f.sweepMBs, "sweep-microbatches", "1,2,4,8,16,32,64", "microbatches for --sweep")
	fs.StringVar(&f.outDir, "out", "out", "directory for sweep outputs")
	fs.BoolVar(&f.progress, "progress", true, "show a progress bar on long runs when stderr is a terminal")
	fs.Int64Var(&f.maxActions, "max-actions", defaultSimMaxActions, fmt.Sprintf("refuse a generated plan of more actions than this, before generating it (at most %d)", scheduler.MaxActions))
	fs.StringVar(&f.allReduce, "all-reduce", "", "replicated stages' all-reduce in generated plans: ordered (exact; the classic schedules' default), auto (cheaper of ring and direct; SkipPipe's default), ring or direct")
	for _, x := range simExtensions {
		if x.AddFlags != nil {
			x.AddFlags(fs)
		}
	}
	return cmd
}

func runSim(cmd *cobra.Command, f *simFlags) error {
	env := &simEnv{
		Spec: scheduler.Spec{
			Stages: f.stages, Microbatches: f.microbatches, Replicas: f.replicas, Chunks: f.chunks,
			Layers: f.layers, Samples: f.samples, Memory: f.memory,
		},
		Options:    sim.Options{Iterations: f.iterations, Overlap: f.overlap, Detail: f.trace != "" || f.gantt != "", MemoryTimeline: f.memoryPlot != ""},
		Seed:       f.seed,
		OutDir:     f.outDir,
		PresetName: f.preset,
		AllReduce:  f.allReduce,
		MaxActions: f.maxActions,
		Stdout:     cmd.OutOrStdout(),
		Stderr:     cmd.ErrOrStderr(),
	}
	if err := scheduler.CheckAllReduceOverride(f.allReduce); err != nil {
		return badInput("--all-reduce: %v", err)
	}
	if f.iterations < 1 {
		return badInput("--iterations is %d, want >= 1", f.iterations)
	}
	if f.maxActions < 1 || f.maxActions > scheduler.MaxActions {
		return badInput("--max-actions is %d, want 1..%d", f.maxActions, scheduler.MaxActions)
	}
	if f.planFile != "" {
		if err := refuseWithPlan(cmd.Flags(), "plan", "schedule", "stages", "microbatches", "replicas", "chunks",
			"layers", "samples", "memory", "all-reduce", "sweep", "sweep-stages", "sweep-microbatches"); err != nil {
			return err
		}
	}
	for _, s := range strings.Split(f.schedules, ",") {
		if s = strings.TrimSpace(s); s != "" {
			env.Schedules = append(env.Schedules, s)
		}
	}
	var err error
	if f.clusterFile != "" {
		env.Cluster, err = sim.LoadCluster(f.clusterFile)
		env.PresetName = ""
	} else {
		env.Cluster, err = sim.Preset(f.preset)
	}
	if err != nil {
		return badInput("%v", err)
	}
	if err := applyMemoryFlags(env.Cluster, f); err != nil {
		return err
	}
	for _, x := range simExtensions {
		if x.Run == nil {
			continue
		}
		if handled, err := x.Run(env); handled || err != nil {
			return err
		}
	}
	if f.sweep {
		return runSweep(env, f)
	}
	if f.planFile == "" && env.Spec.Layers == 0 {
		env.Spec.Layers = commonLayers(env)
	}
	jobs, err := buildSimJobs(env, f.planFile)
	if err != nil {
		return err
	}
	if err := balanceJobs(env, jobs); err != nil {
		return err
	}
	results, err := runSimJobs(env, jobs)
	if err != nil {
		return err
	}
	if err := writeMemoryPlots(env, results, f.memoryPlot); err != nil {
		return err
	}
	return writeSimOutputs(env, results, f.jsonOut, f.trace, f.gantt)
}

// applyMemoryFlags puts --memory-gib and the model flags into the cluster:
// each flag set overrides the cluster file's field.
func applyMemoryFlags(c *sim.Cluster, f *simFlags) error {
	if f.memoryGiB < 0 || math.IsNaN(f.memoryGiB) || math.IsInf(f.memoryGiB, 0) {
		return badInput("--memory-gib is %v, want a finite number >= 0", f.memoryGiB)
	}
	if f.memoryGiB > 0 {
		c.DefaultMemoryGiB = f.memoryGiB
		for i := range c.Nodes {
			c.Nodes[i].MemoryGiB = f.memoryGiB
		}
	}
	m := sim.ModelMemory{}
	if c.Model != nil {
		m = *c.Model
	}
	if err := overrideModelMemory(&m, f.model); err != nil {
		return err
	}
	c.Model = &m
	if err := c.Validate(); err != nil {
		return badInput("%v", err)
	}
	return nil
}

// registerModelMemoryFlags adds the model shape and optimizer flags that
// size memory in bytes; a zero value leaves the field to deflt's source.
func registerModelMemoryFlags(fs *pflag.FlagSet, m *sim.ModelMemory, deflt string) {
	fs.IntVar(&m.Dim, "dim", 0, "model width, for memory in bytes (0: "+deflt+"128)")
	fs.IntVar(&m.Heads, "heads", 0, "attention heads (0: "+deflt+"4)")
	fs.IntVar(&m.Ctx, "ctx", 0, "context length in tokens (0: "+deflt+"64)")
	fs.IntVar(&m.Vocab, "vocab", 0, "vocabulary size (0: "+deflt+"256)")
	fs.IntVar(&m.Hidden, "hidden", 0, "MLP width (0: "+deflt+"4 x dim)")
	fs.StringVar(&m.Optimizer, "optimizer", "", "optimizer whose state is counted: adamw, lamb (2 moments) or sgd (none) (default: "+deflt+"adamw)")
}

// overrideModelMemory sets in m every field the flags set.
func overrideModelMemory(m *sim.ModelMemory, flags sim.ModelMemory) error {
	for _, v := range []struct {
		flag string
		n    int
		dst  *int
	}{{"dim", flags.Dim, &m.Dim}, {"heads", flags.Heads, &m.Heads}, {"ctx", flags.Ctx, &m.Ctx}, {"vocab", flags.Vocab, &m.Vocab}, {"hidden", flags.Hidden, &m.Hidden}} {
		if v.n < 0 {
			return badInput("--%s is %d, want >= 0", v.flag, v.n)
		}
		if v.n > 0 {
			*v.dst = v.n
		}
	}
	if flags.Optimizer != "" {
		if _, err := sim.OptimizerStates(flags.Optimizer); err != nil {
			return badInput("--optimizer: %v", err)
		}
		m.Optimizer = flags.Optimizer
	}
	return nil
}

// writeMemoryPlots draws each simulated schedule's memory over time: to
// path with one schedule, else to NAME-<schedule>.EXT each.
func writeMemoryPlots(env *simEnv, results []*sim.Result, path string) error {
	if path == "" {
		return nil
	}
	var written []string
	for _, r := range results {
		if len(r.Memory) == 0 {
			continue // not simulated
		}
		out := path
		if len(results) > 1 {
			ext := filepath.Ext(path)
			out = strings.TrimSuffix(path, ext) + "-" + r.Schedule + ext
		}
		if err := mkdirFor(out); err != nil {
			return err
		}
		if err := sim.WriteMemoryPlot(out, r); err != nil {
			return badInput("%v", err)
		}
		written = append(written, out)
	}
	if len(results) > 1 {
		fmt.Fprintf(env.Stderr, "wrote memory plots %s\n", strings.Join(written, ", "))
	}
	return nil
}

// buildSimJobs makes the plans to simulate: a plan file, or each schedule.
func buildSimJobs(env *simEnv, planFile string) ([]*simJob, error) {
	if planFile != "" {
		pl, err := readPlanFile(planFile)
		if err != nil {
			return nil, err
		}
		return []*simJob{{Name: pl.Schedule, Plan: pl, Cluster: env.Cluster}}, nil
	}
	if len(env.Schedules) == 0 {
		return nil, badInput("--schedule names no schedule")
	}
	var jobs []*simJob
	for _, name := range env.Schedules {
		j, err := buildSimJob(env, name)
		if err != nil {
			return nil, err
		}
		jobs = append(jobs, j)
	}
	return jobs, nil
}

func buildSimJob(env *simEnv, name string) (*simJob, error) {
	for _, x := range simExtensions {
		if b, ok := x.Schedules[name]; ok {
			return b(env)
		}
	}
	if _, err := planner.Lookup(name); err != nil {
		return nil, badInput("%v", err)
	}
	spec, err := placedSpec(env, name)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	pl, err := planSpec(name, spec)
	if err != nil {
		if len(env.Schedules) > 1 {
			// One schedule refusing the shape asked for (a V schedule
			// with --chunks 3, say) is a row of the comparison.
			return &simJob{Name: name, Cluster: env.Cluster, Infeasible: err.Error()}, nil
		}
		return nil, badInput("%v", err)
	}
	planTime := time.Since(start).Seconds()
	if err := scheduler.Validate(pl); err != nil {
		var ve *scheduler.ValidationError
		if errors.As(err, &ve) && ve.Rule == scheduler.RuleMemory {
			// The schedule needs more memory than --memory gives: a row
			// of the comparison, not a failure of the whole table.
			return &simJob{Name: name, Plan: pl, Cluster: env.Cluster, PlanTimeS: planTime, Infeasible: err.Error()}, nil
		}
		return nil, fmt.Errorf("schedule %s produced an invalid plan: %w", name, err)
	}
	// Each replicated stage all-reduces by the cheaper algorithm under
	// the cluster, unless the schedule (or --all-reduce) says otherwise;
	// a plan file keeps the ones it names.
	if err := scheduler.OverrideAllReduce(pl, env.AllReduce); err != nil {
		return nil, badInput("%v", err)
	}
	if _, err := sim.ChooseAllReduce(pl, env.Cluster); err != nil {
		return nil, badInput("schedule %s: %v", name, err)
	}
	return &simJob{Name: name, Plan: pl, Cluster: env.Cluster, PlanTimeS: planTime}, nil
}

// planSpec plans a classic schedule of spec's shape through the planner,
// its workers on spec.Nodes in order (when set).
func planSpec(name string, spec scheduler.Spec) (*scheduler.Plan, error) {
	return planner.Plan(planner.Snapshot{Schedule: name, Members: spec.Nodes, Epoch: spec.Epoch, Rules: planner.Rules{
		Stages: spec.Stages, Replicas: spec.Replicas, Microbatches: spec.Microbatches, Chunks: spec.Chunks,
		Layers: spec.Layers, Samples: spec.Samples, Memory: spec.Memory, Recompute: spec.Recompute,
	}})
}

// placedSpec is env's spec, checked against --max-actions, with its
// workers placed on the cluster's nodes in order (when the cluster lists
// them).
func placedSpec(env *simEnv, name string) (scheduler.Spec, error) {
	spec := env.Spec
	if err := checkSimSize(spec, env.MaxActions); err != nil {
		return spec, err
	}
	if len(env.Cluster.Nodes) > 0 && !env.Cluster.AnyNode {
		need := spec.Stages * max(spec.Replicas, 1)
		if need > len(env.Cluster.Nodes) {
			return spec, badInput("cluster %q has %d nodes, schedule %s needs %d (stages x replicas)", env.Cluster.Name, len(env.Cluster.Nodes), name, need)
		}
		for i := range need {
			spec.Nodes = append(spec.Nodes, env.Cluster.Nodes[i].Name)
		}
	}
	return spec, nil
}

// defaultSimMaxActions is --max-actions' default: the largest specs it
// admits simulate in under half a minute within 300 MB here
// (docs/security-limits.md), and a 64-stage x 4096-microbatch GPipe
// plan fits.
const defaultSimMaxActions = 1 << 22

// checkSimSize refuses a spec whose plan would exceed limit actions,
// before anything is generated: each of the flags is within its own
// bounds, but their product is what costs time and memory.
func checkSimSize(s scheduler.Spec, limit int64) error {
	if limit <= 0 {
		limit = defaultSimMaxActions
	}
	if n := s.EstimateActions(); n > limit {
		chunks := "the schedule's default"
		if s.Chunks > 0 {
			chunks = strconv.Itoa(s.Chunks)
		}
		return badInput("--stages %d x --microbatches %d (--chunks %s, --replicas %d) make up to %d actions, over the limit of %d (--max-actions, at most %d): use fewer stages or microbatches",
			s.Stages, s.Microbatches, chunks, max(s.Replicas, 1), n, limit, scheduler.MaxActions)
	}
	return nil
}

func readPlanFile(path string) (*scheduler.Plan, error) {
	// JSON, or a PyTorch action CSV with its dialect detected and stages
	// mapped loop-style.
	pl, _, err := readAnyPlan(path, pytorchcsv.DialectAuto, pytorchcsv.MappingLoop)
	return pl, err
}

func runSimJobs(env *simEnv, jobs []*simJob) ([]*sim.Result, error) {
	bar := newProgress(env.Stderr, len(jobs), "simulating", len(jobs) > 3)
	var out []*sim.Result
	feasible := 0
	for _, j := range jobs {
		if j.Infeasible != "" {
			r := &sim.Result{Schedule: j.Name, Workers: env.Spec.Stages * max(env.Spec.Replicas, 1), Stages: env.Spec.Stages,
				Layers: env.Spec.Layers, Microbatches: env.Spec.Microbatches, Iterations: env.Options.Iterations,
				PlanTimeS: j.PlanTimeS, Infeasible: j.Infeasible}
			if p := j.Plan; p != nil {
				r.Workers, r.Stages, r.Layers, r.Microbatches, r.Plan = len(p.Workers), len(p.Stages), p.Layers(), len(p.Microbatches), p
			}
			out = append(out, r)
			bar.Add(1)
			continue
		}
		feasible++
		r, err := sim.Run(j.Plan, j.Cluster, env.Options)
		if err != nil {
			return nil, badInput("schedule %s: %v", j.Name, err)
		}
		r.Schedule = j.Name
		r.PlanTimeS = j.PlanTimeS
		if r.Infeasible != "" {
			feasible-- // over a node's memory in bytes
		}
		out = append(out, r)
		bar.Add(1)
	}
	bar.Finish()
	if feasible == 0 {
		why := make([]string, len(out))
		for i, r := range out {
			why[i] = r.Schedule + ": " + r.Infeasible
		}
		return nil, badInput("no schedule can run: %s", strings.Join(why, "; "))
	}
	return out, nil
}

// feasibleResults drops the rows that were not simulated.
func feasibleResults(results []*sim.Result) []*sim.Result {
	var out []*sim.Result
	for _, r := range results {
		if r.Infeasible == "" {
			out = append(out, r)
		}
	}
	return out
}

// refuseWithPlan names the first of flags set beside --plan: a plan file
// fixes the schedule, its shape and its all-reduce, so they would be
// silently ignored.
func refuseWithPlan(fs *pflag.FlagSet, planFlag string, flags ...string) error {
	for _, name := range flags {
		if fs.Changed(name) {
			return badInput("--%s conflicts with --%s: the plan file fixes the schedule and its shape", name, planFlag)
		}
	}
	return nil
}

// commonLayers picks one layer count for every classic schedule compared,
// so that each simulates the same model: the least common multiple of
// their stage counts (an interleaved schedule has chunks x ranks stages),
// which spreads evenly over every one of them.
func commonLayers(env *simEnv) int {
	layers := 1
	for _, name := range env.Schedules {
		if name == autoSchedule {
			// The search tries two-chunk placements too.
			layers = lcm(layers, 2*max(env.Spec.Stages, 1))
			continue
		}
		if isSimExtensionSchedule(name) {
			continue
		}
		probe := env.Spec
		probe.Microbatches = min(probe.Microbatches, 2*max(probe.Stages, 1))
		if checkSimSize(probe, env.MaxActions) != nil {
			continue // the real generation, larger, refuses it
		}
		pl, err := planSpec(name, probe)
		if err != nil {
			continue // the real generation reports it
		}
		layers = lcm(layers, len(pl.Stages))
		if layers > scheduler.MaxStages*4 {
			return 0 // no sensible common count: each keeps its own
		}
	}
	return layers
}

func isSimExtensionSchedule(name string) bool {
	for _, x := range simExtensions {
		if _, ok := x.Schedules[name]; ok {
			return true
		}
	}
	return false
}

func lcm(a, b int) int {
	g, y := a, b
	for y != 0 {
		g, y = y, g%y
	}
	return a / g * b
}

func writeSimOutputs(env *simEnv, results []*sim.Result, jsonOut bool, trace, gantt string) error {
	simulated := feasibleResults(results)
	if trace != "" {
		if err := writeFileWith(trace, func(w io.Writer) error { return sim.WriteChromeTrace(w, simulated...) }); err != nil {
			return err
		}
	}
	if gantt != "" {
		var written []string
		for _, r := range simulated {
			path := gantt
			if len(results) > 1 {
				ext := filepath.Ext(gantt)
				path = strings.TrimSuffix(gantt, ext) + "-" + r.Schedule + ext
			}
			if err := mkdirFor(path); err != nil {
				return err
			}
			if err := sim.WriteGantt(path, r, sim.GanttOptions{}); err != nil {
				return err
			}
			written = append(written, path)
		}
		if len(results) > 1 {
			// One chart per schedule: say where they went, since
			// the name given was not used as it stands.
			fmt.Fprintf(env.Stderr, "wrote Gantt charts %s\n", strings.Join(written, ", "))
		}
	}
	if jsonOut {
		enc := json.NewEncoder(env.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(results)
	}
	return sim.WriteTable(env.Stdout, results)
}

func mkdirFor(path string) error {
	if dir := filepath.Dir(path); dir != "." {
		return os.MkdirAll(dir, 0o755)
	}
	return nil
}

// writeFileWith writes a file through fn, creating its directory.
func writeFileWith(path string, fn func(io.Writer) error) error {
	if err := mkdirFor(path); err != nil {
		return err
	}
	fh, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := fn(fh); err != nil {
		fh.Close()
		return fmt.Errorf("%s: %w", path, err)
	}
	return fh.Close()
}

func parseIntList(flag, s string) ([]int, error) {
	var out []int
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		v, err := strconv.Atoi(part)
		if err != nil || v < 1 {
			return nil, badInput("--%s: %q is not a positive integer", flag, part)
		}
		out = append(out, v)
	}
	if len(out) == 0 {
		return nil, badInput("--%s is empty", flag)
	}
	return out, nil
}

// runSweep simulates every schedule over stages x microbatches and writes
// sweep.csv and a plot of bubble fraction against microbatches.
func runSweep(env *simEnv, f *simFlags) error {
	stages, err := parseIntList("sweep-stages", f.sweepStages)
	if err != nil {
		return err
	}
	mbs, err := parseIntList("sweep-microbatches", f.sweepMBs)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(env.OutDir, 0o755); err != nil {
		return err
	}
	csvPath := filepath.Join(env.OutDir, "sweep.csv")
	fh, err := os.Create(csvPath)
	if err != nil {
		return err
	}
	defer fh.Close()
	cw := csv.NewWriter(fh)
	_ = cw.Write([]string{"schedule", "stages", "microbatches", "iteration_time_s", "bubble_fraction", "bubble_over_ideal", "span_s", "peak_activations", "peak_bytes"})
	bar := newProgress(env.Stderr, len(env.Schedules)*len(stages)*len(mbs), "sweeping", f.progress)
	var series []sim.Series
	var skipped []string
	for _, name := range env.Schedules {
		for pi, p := range stages {
			s := sim.Series{Name: fmt.Sprintf("%s p=%d", name, p), Group: name, Variant: pi}
			for _, m := range mbs {
				e := *env
				e.Spec.Stages, e.Spec.Microbatches = p, m
				e.Options.Detail = false
				if env.Spec.Layers == 0 {
					e.Spec.Layers = commonLayers(&e)
				}
				j, err := buildSimJob(&e, name)
				if err != nil {
					return err
				}
				bar.Add(1)
				if j.Infeasible != "" {
					_ = cw.Write([]string{name, strconv.Itoa(p), strconv.Itoa(m), "infeasible", "", "", "", "", ""})
					skipped = append(skipped, fmt.Sprintf("%s p=%d m=%d", name, p, m))
					continue
				}
				r, err := sim.Run(j.Plan, j.Cluster, e.Options)
				if err != nil {
					return badInput("schedule %s p=%d m=%d: %v", name, p, m, err)
				}
				if r.Infeasible != "" {
					_ = cw.Write([]string{name, strconv.Itoa(p), strconv.Itoa(m), "infeasible", "", "", "", "", fmtF(r.PeakBytes)})
					skipped = append(skipped, fmt.Sprintf("%s p=%d m=%d", name, p, m))
					continue
				}
				_ = cw.Write([]string{name, strconv.Itoa(p), strconv.Itoa(m), fmtF(r.IterationTimeS), fmtF(r.BubbleFraction), fmtF(r.BubbleOverIdeal), fmtF(r.SpanS), strconv.Itoa(r.PeakActivations), fmtF(r.PeakBytes)})
				s.X = append(s.X, float64(m))
				s.Y = append(s.Y, r.BubbleFraction)
			}
			if len(s.X) > 0 {
				series = append(series, s)
			}
		}
	}
	bar.Finish()
	cw.Flush()
	if err := cw.Error(); err != nil {
		return err
	}
	if len(skipped) > 0 {
		fmt.Fprintf(env.Stderr, "infeasible under the memory limits (left out of the plot): %s\n", strings.Join(skipped, ", "))
	}
	if len(series) == 0 {
		return badInput("no point of the sweep fits in memory (--memory %d, --memory-gib %v or the cluster's memory_gib)", env.Spec.Memory, f.memoryGiB)
	}
	pngPath := filepath.Join(env.OutDir, "sweep.png")
	lp := sim.LinePlot{Title: "Bubble fraction vs microbatches", XLabel: "microbatches m", YLabel: "bubble fraction", Series: series, LogX2: true}
	if err := lp.Write(pngPath); err != nil {
		return err
	}
	fmt.Fprintf(env.Stdout, "wrote %s and %s\n", csvPath, pngPath)
	return nil
}

func fmtF(v float64) string { return strconv.FormatFloat(v, 'g', 10, 64) }
