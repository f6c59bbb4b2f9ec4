package main

import (
	"fmt"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"stagecoach/coordinator"
	"stagecoach/model"
	"stagecoach/sim"
)

func init() { rootCmd.AddCommand(newCalibrateCmd()) }

// newCalibrateCmd is `stagecoach up` with calibration defaults: a few
// steps of GPipe whose measured action times (after two warm-up steps)
// become the cost model in --out/calibration.yaml.
func newCalibrateCmd() *cobra.Command {
	cmd := newUpCmd()
	cmd.Use = "calibrate"
	cmd.Short = "Measure per-stage compute per worker and per-hop overhead on a local cluster; write a cost model for sim --cluster"
	cmd.Long = `Run 'stagecoach up' for a few steps (default 6, GPipe) and write the cost model
calibrated from the workers' measured action times to --out/calibration.yaml:
forward time per sample of every stage, each node's speed relative to its
stage's mean, the backward/forward and loss ratios, the model's activation
and gradient sizes, and the per-hop overhead the links do not explain
(loopback gRPC and framing). With --cluster or --preset the links are those
the workers emulate (scaled by --link-scale), so the file reproduces the
emulated network; 'stagecoach sim --cluster calibration.yaml' and
'stagecoach up --costs calibration.yaml' read it. --out/summary.json lists
every measured link (mean hop of a microbatch between two workers, beside
the emulated link's price) under "links". The first two steps are warm-up
and not measured.`
	for k, v := range map[string]string{"steps": "6", "out": "run-calibrate", "checkpoint": "false", "job": "calibrate"} {
		if err := cmd.Flags().Set(k, v); err != nil {
			panic(fmt.Sprintf("calibrate: flag %s: %v", k, err))
		}
	}
	return cmd
}

// emulationFlags are the network emulation and replanning flags of `up`,
// `calibrate` and `coordinator`.
type emulationFlags struct {
	cluster, preset, costs string
	linkScale, drift       float64
}

func (e *emulationFlags) register(f *pflag.FlagSet) {
	f.StringVar(&e.cluster, "cluster", "", "emulate this sim cluster YAML's links between the workers (named after its nodes) and plan with its costs")
	f.StringVar(&e.preset, "preset", "", "like --cluster with a built-in cluster (homogeneous, skippipe-geo)")
	f.Float64Var(&e.linkScale, "link-scale", 1, "with --cluster/--preset: one microbatch hop of this model takes link-scale x the cluster's own workload hop (latency and overhead x scale, bandwidth resized for the model's activation bytes); 0.01 makes skippipe-geo a minutes-long demo")
	f.StringVar(&e.costs, "costs", "", "plan with this calibrated cost model (calibration.yaml from 'stagecoach calibrate') instead of the cluster's nominal compute")
	f.Float64Var(&e.drift, "replan-drift", 0, "replan (new epoch, between steps) when the cost model calibrated from the workers' timings drifts past this fraction from the one the plan was made with (0: never)")
}

// load returns the cluster named by --cluster or --preset (nil for none).
func (e *emulationFlags) load() (*sim.Cluster, error) {
	switch {
	case e.cluster != "" && e.preset != "":
		return nil, badInput("--cluster and --preset exclude each other")
	case e.cluster != "":
		c, err := sim.LoadCluster(e.cluster)
		if err != nil {
			return nil, badInput("--cluster: %v", err)
		}
		return c, nil
	case e.preset != "":
		c, err := sim.Preset(e.preset)
		if err != nil {
			return nil, badInput("--preset: %v", err)
		}
		if err := c.Validate(); err != nil {
			return nil, badInput("--preset %s: %v", e.preset, err)
		}
		return c, nil
	}
	return nil, nil
}

// workerNames names the workers after the cluster's nodes (its first
// j.workers; all of them when --workers was not given), or nil. With all
// nodes and no --microbatches it also takes the cluster workload's
// microbatch count when the default does not split over stage 0.
func (e *emulationFlags) workerNames(j *jobFlags, fs *pflag.FlagSet) ([]string, error) {
	c, err := e.load()
	if err != nil || c == nil || len(c.Nodes) == 0 {
		return nil, err
	}
	if !fs.Changed("workers") {
		j.workers = len(c.Nodes)
	}
	// The cluster's workload splits microbatches over the origins of
	// stage 0: unless told otherwise, train with its microbatch count.
	if w := c.Workload; w != nil && len(w.StageNodes) > 0 && w.StageNodes[0] > 0 && !fs.Changed("microbatches") && !fs.Changed("workers") {
		if per := max(w.MicrobatchesPerOrigin, 1); j.train.Microbatches%w.StageNodes[0] != 0 {
			j.train.Microbatches = w.StageNodes[0] * per
		}
	}
	if j.workers > len(c.Nodes) {
		return nil, badInput("--workers %d, but cluster %q has %d nodes", j.workers, c.Name, len(c.Nodes))
	}
	var names []string
	for _, n := range c.Nodes[:j.workers] {
		names = append(names, n.Name)
	}
	return names, nil
}

// speeds are the compute speeds of the named cluster nodes for `up
// --emulate-speed`. A speed above 1 cannot be emulated (a worker can only
// wait), so the fastest node must be at most the machine's speed.
func (e *emulationFlags) speeds(names []string) (map[string]float64, error) {
	c, err := e.load()
	if err != nil {
		return nil, err
	}
	if c == nil || len(names) == 0 {
		return nil, badInput("--emulate-speed needs --cluster or --preset: the node speeds to emulate")
	}
	out := map[string]float64{}
	for _, n := range names {
		_, nd, err := c.Lookup(n)
		if err != nil {
			return nil, badInput("--emulate-speed: %v", err)
		}
		if nd.Speed > 1 {
			return nil, badInput("--emulate-speed: node %s of cluster %q has speed %g; only speeds up to 1 (this machine's) can be emulated: scale the speeds so the fastest is 1", n, c.Name, nd.Speed)
		}
		out[n] = nd.Speed
	}
	return out, nil
}

// config is j.config with the scaled cluster, the cost model and the
// drift threshold: validated once they are in (a cluster's workload may
// give stages of unequal node counts, which only then validate).
func (e *emulationFlags) config(j *jobFlags, endpoints []string) (coordinator.Config, error) {
	if e.cluster == "" && e.preset == "" && e.costs == "" && e.drift == 0 {
		return j.config(endpoints)
	}
	if j.optimizer != "adamw" && j.optimizer != "lamb" {
		return coordinator.Config{}, badInput("--optimizer must be adamw or lamb, got %q", j.optimizer)
	}
	if j.lr < 0 {
		return coordinator.Config{}, badInput("--lr must not be negative")
	}
	if err := checkMetricsAddr(j.metricsAddr); err != nil {
		return coordinator.Config{}, err
	}
	tc := j.train
	tc.Optim = model.OptimConfig{Kind: j.optimizer, LR: j.lr}
	tc.Model = tc.Model.WithDefaults()
	tlsConf, err := j.tls.load()
	if err != nil {
		return coordinator.Config{}, err
	}
	cfg := coordinator.Config{
		Job: j.job, Endpoints: endpoints, Simulator: sim.Simulator{}, TTL: j.ttl, Workers: j.workers, Stages: j.stages,
		Schedule: j.schedule, Train: tc, Steps: j.steps, CorpusDir: j.corpus, MaxCorpusBytes: j.maxBytes,
		OutDir: j.out, Checkpoint: j.ckpt, CheckpointEvery: j.ckptEvery, TLS: tlsConf, AllReduce: j.allReduce,
		Retain: j.retain, Name: j.name, Balance: j.balance,
	}
	return cfg, e.apply(&cfg)
}

// apply puts the scaled cluster, the cost model and the drift threshold
// into cfg and validates it.
func (e *emulationFlags) apply(cfg *coordinator.Config) error {
	if e.drift < 0 {
		return badInput("--replan-drift must not be negative")
	}
	cfg.ReplanDrift = e.drift
	c, err := e.load()
	if err != nil {
		return err
	}
	if c != nil {
		sc, err := coordinator.ScaleLinks(c, e.linkScale, cfg.Train.Model, cfg.Train.MicrobatchSize)
		if err != nil {
			return badInput("--link-scale: %v", err)
		}
		if cfg.Cluster, err = coordinator.EncodeCluster(sc); err != nil {
			return err
		}
	}
	if e.costs != "" {
		var err error
		if cfg.Costs, err = sim.LoadCluster(e.costs); err != nil {
			return badInput("--costs: %v", err)
		}
	}
	if err := cfg.Validate(); err != nil {
		return badInput("%v", err)
	}
	return nil
}
