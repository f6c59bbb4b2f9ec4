package main

// `stagecoach sim --failures TRACE` and `--mtbf`: each schedule through a
// failure trace with the coordinator's recovery policy and planners
// (sim/failures), for several checkpoint intervals.

import (
	"encoding/json"
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/pflag"

	"stagecoach/internal/etcdx"
	"stagecoach/planner"
	"stagecoach/scheduler"
	"stagecoach/sim"
	"stagecoach/sim/failures"
)

type failureFlags struct {
	fs      *pflag.FlagSet
	trace   string
	mtbf    time.Duration
	repair  time.Duration
	horizon time.Duration
	steps   int
	every   string
	plot    string
	costs   failures.Costs
}

var failOpts = &failureFlags{}

var _ = func() bool {
	registerSimExtension(&simExtension{
		AddFlags: func(fs *pflag.FlagSet) {
			o := failOpts
			o.fs = fs
			fs.StringVar(&o.trace, "failures", "", "simulate each schedule through this failure trace (YAML: events of crash, pause, rejoin, degrade at times)")
			fs.DurationVar(&o.mtbf, "mtbf", 0, "simulate through failures drawn per node with this mean time between failures (with --seed)")
			fs.DurationVar(&o.repair, "repair", 10*time.Minute, "with --mtbf: a crashed node rejoins after this long")
			fs.DurationVar(&o.horizon, "horizon", 24*time.Hour, "with --failures or --mtbf: simulated run length")
			fs.IntVar(&o.steps, "failure-steps", 0, "with --failures or --mtbf: stop after this many committed steps (0: at --horizon)")
			fs.StringVar(&o.every, "checkpoint-every", "10", "with --failures or --mtbf: checkpoint intervals to compare, in steps, comma-separated")
			fs.StringVar(&o.plot, "failures-plot", "", "with --failures or --mtbf: write throughput over time with the failures marked (.png or .svg)")
			fs.Float64Var(&o.costs.DetectS, "detect-s", 0.02, "with --failures: seconds to notice a crashed peer (a failed stream)")
			fs.Float64Var(&o.costs.LeaseTTLS, "lease-ttl-s", etcdx.DefaultTTL, "with --failures: seconds to notice a paused node (its lease expires)")
			fs.Float64Var(&o.costs.PlanS, "plan-s", 0.05, "with --failures: seconds to plan and install a plan")
			fs.Float64Var(&o.costs.CheckpointS, "checkpoint-s", 1, "with --failures: seconds to write a checkpoint")
			fs.Float64Var(&o.costs.RestoreS, "restore-s", 1, "with --failures: seconds to load a checkpoint")
			fs.Float64Var(&o.costs.ReplaceWaitS, "replace-wait-s", 3*etcdx.DefaultTTL, "with --failures: seconds a restore waits for replacements when fewer nodes than the job's are left (the coordinator's ReplaceWait)")
		},
		Run: runFailureModes,
	})
	return true
}()

func runFailureModes(env *simEnv) (bool, error) {
	o := failOpts
	if o.trace == "" && o.mtbf == 0 {
		return false, nil
	}
	if o.trace != "" && o.mtbf != 0 {
		return true, badInput("--failures and --mtbf: give one")
	}
	if o.horizon <= 0 || o.steps < 0 || o.mtbf < 0 || o.repair < 0 {
		return true, badInput("--horizon must be positive, --failure-steps, --mtbf and --repair not negative")
	}
	for name, v := range map[string]float64{"--detect-s": o.costs.DetectS, "--lease-ttl-s": o.costs.LeaseTTLS, "--plan-s": o.costs.PlanS,
		"--checkpoint-s": o.costs.CheckpointS, "--restore-s": o.costs.RestoreS, "--replace-wait-s": o.costs.ReplaceWaitS} {
		if !(v >= 0) || v > 1e9 {
			return true, badInput("%s is %v, want seconds >= 0", name, v)
		}
	}
	var every []int
	for _, s := range strings.Split(o.every, ",") {
		k, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || k < 0 || k > 1<<20 {
			return true, badInput("--checkpoint-every %q: want step counts >= 0, comma-separated", o.every)
		}
		every = append(every, k)
	}
	var runs []*failures.Outcome
	var marks []float64
	for _, name := range env.Schedules {
		job, err := failureJob(env, name)
		if err != nil {
			return true, err
		}
		trace, err := failureTrace(job.Nodes)
		if err != nil {
			return true, err
		}
		if len(marks) == 0 && trace != nil {
			for _, e := range trace.Events {
				if e.Kind != failures.Rejoin {
					marks = append(marks, e.At.Seconds()/3600)
				}
			}
		}
		for _, k := range every {
			job.CheckpointEvery = k
			out, err := failures.Run(job, trace)
			if err != nil {
				return true, fmt.Errorf("schedule %s: %w", name, err)
			}
			runs = append(runs, out)
		}
	}
	if jsonOut, _ := o.fs.GetBool("json"); jsonOut {
		enc := json.NewEncoder(env.Stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(runs); err != nil {
			return true, err
		}
	} else {
		writeFailureTable(env, runs)
	}
	if o.plot != "" {
		if err := writeFailurePlot(o.plot, runs, marks); err != nil {
			return true, badInput("%v", err)
		}
		fmt.Fprintf(env.Stderr, "wrote %s\n", o.plot)
	}
	return true, nil
}

// failureTrace reads --failures or draws one from --mtbf.
func failureTrace(nodes []string) (*failures.Trace, error) {
	o := failOpts
	if o.trace != "" {
		t, err := failures.LoadTrace(o.trace, nodes)
		if err != nil {
			return nil, badInput("%v", err)
		}
		return t, nil
	}
	seed, _ := o.fs.GetInt64("seed")
	t, err := failures.Draw(nodes, o.mtbf, o.repair, o.horizon, seed)
	if err != nil {
		return nil, badInput("%v", err)
	}
	return t, nil
}

// failureJob builds the job of one schedule: SkipPipe families on a
// cluster with a workload (where "gpipe" is still read as skippipe-full,
// GPipe over SkipPipe's placement), classic schedules otherwise. Every
// plan of the run comes from the planner.
func failureJob(env *simEnv, name string) (failures.Job, error) {
	o := failOpts
	job := failures.Job{Name: name, Cluster: env.Cluster, Costs: o.costs, Iterations: o.steps, HorizonS: o.horizon.Seconds()}
	if w := env.Cluster.Workload; w != nil && len(w.StageNodes) > 1 {
		resolved, note := planner.InSkipPipeList(name)
		if note != "" {
			fmt.Fprintf(env.Stderr, "note: %s\n", note)
		}
		fam, err := planner.Lookup(resolved)
		if err != nil || fam.Kind != planner.KindSkipPipe {
			return job, badInput("--failures on cluster %q (a SkipPipe workload): schedules %s, not %q", env.Cluster.Name, strings.Join(planner.SkipPipeNames(), ", "), name)
		}
		cfg, err := skipConfigFromCluster(env.Cluster, env.Seed, 0)
		if err != nil {
			return job, err
		}
		if _, err := fixPlacement(&cfg); err != nil {
			return job, err
		}
		// No simulated objective: a failure trace re-plans hundreds of
		// times, and the planner's own estimate picks the paths.
		job.Name = resolved
		job.Planner = failures.Planner{Snapshot: planner.Snapshot{Schedule: resolved, Input: &cfg}, Cache: map[string]*scheduler.Plan{}}
		job.Nodes = cfg.NodeNames
		return job, nil
	}
	if _, err := planner.Lookup(name); err != nil {
		return job, badInput("%v", err)
	}
	spec := env.Spec
	replicas := max(spec.Replicas, 1)
	n := spec.Stages * replicas
	for i := range n {
		if len(env.Cluster.Nodes) > 0 && !env.Cluster.AnyNode {
			if i >= len(env.Cluster.Nodes) {
				return job, badInput("cluster %q has %d nodes, schedule %s needs %d (stages x replicas)", env.Cluster.Name, len(env.Cluster.Nodes), name, n)
			}
			job.Nodes = append(job.Nodes, env.Cluster.Nodes[i].Name)
		} else {
			job.Nodes = append(job.Nodes, fmt.Sprintf("node-%02d", i))
		}
	}
	sort.Strings(job.Nodes) // classic plans place workers by name, as the coordinator does
	job.Planner = failures.Planner{Snapshot: planner.Snapshot{Schedule: name, Rules: planner.Rules{
		Stages: spec.Stages, Microbatches: spec.Microbatches, Chunks: spec.Chunks, Layers: spec.Layers,
		Samples: spec.Samples, Memory: spec.Memory, Recompute: spec.Recompute,
	}}}
	return job, nil
}

func writeFailureTable(env *simEnv, runs []*failures.Outcome) {
	tw := tabwriter.NewWriter(env.Stdout, 2, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "schedule\tcheckpoint_every\tgoodput_samples_per_h\tcommitted\tlost\treplayed\tfailures\tmean_recover_s\tfailure_free_iteration_s\telapsed_h\t")
	for _, r := range runs {
		n := 0
		for _, rc := range r.Recoveries {
			if rc.Action == "repath" || rc.Action == "restore" {
				n++
			}
		}
		fmt.Fprintf(tw, "%s\t%d\t%.0f\t%d\t%d\t%d\t%d\t%.3g\t%.4g\t%.2f\t\n", r.Name, r.CheckpointEvery, r.GoodputPerHour, r.Committed,
			r.Lost, r.Replayed, n, r.MeanRecoverS(), r.FailureFreeS, r.ElapsedS/3600)
	}
	tw.Flush()
	for _, r := range runs {
		if r.Stopped != "" {
			fmt.Fprintf(env.Stdout, "%s (checkpoint every %d): stopped %s\n", r.Name, r.CheckpointEvery, r.Stopped)
		}
	}
}

// writeFailurePlot draws committed samples per second, averaged over
// bins of the run, for every run, with the failures marked.
func writeFailurePlot(path string, runs []*failures.Outcome, marks []float64) error {
	var series []sim.Series
	for _, r := range runs {
		if r.ElapsedS <= 0 {
			continue
		}
		// Bins of at least five failure-free iterations, so an
		// undisturbed stretch reads as a level line.
		w := max(r.ElapsedS/120, 5*r.FailureFreeS)
		bins := max(1, int(math.Ceil(r.ElapsedS/w)))
		sum := make([]float64, bins)
		for _, p := range r.Timeline {
			sum[min(int(p.T/w), bins-1)] += p.Samples
		}
		s := sim.Series{Name: fmt.Sprintf("%s, checkpoint every %d", r.Name, r.CheckpointEvery), Group: r.Name}
		for b := range sum {
			width := min(w, r.ElapsedS-float64(b)*w) // the last bin may be shorter
			s.X = append(s.X, (float64(b)*w+width/2)/3600)
			s.Y = append(s.Y, sum[b]/width)
		}
		series = append(series, s)
	}
	if len(series) == 0 {
		return fmt.Errorf("failures plot: no run to draw")
	}
	for i := range series {
		series[i].Variant = i
	}
	return sim.LinePlot{Title: "throughput through failures (dashed: failures)", XLabel: "hours", YLabel: "committed samples per second",
		Series: series, Marks: marks}.Write(path)
}
