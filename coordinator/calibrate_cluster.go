package coordinator

import (
	"fmt"
	"math"

	"go.yaml.in/yaml/v3"

	"stagecoach/costmodel"
	"stagecoach/model"
	"stagecoach/scheduler"
)

// ActivationBytes is costmodel.ActivationBytes: one sample's activations
// between two stages of m.
func ActivationBytes(m model.Config) float64 { return costmodel.ActivationBytes(m) }

// ScaleLinks sizes a cluster's network for a small model on a laptop, so
// that its 12-region table can be reproduced in minutes: every hop of one
// of this model's microbatches (samples x ActivationBytes(m)) takes
// timeScale times what a hop of the cluster's own workload microbatch
// takes. Latencies, the per-hop overhead and a Delays matrix are
// multiplied by timeScale; bandwidths are rescaled by the ratio of the
// two microbatch sizes over timeScale, so every link keeps its place
// relative to every other (same latency and bandwidth ratios). The framing
// bytes are dropped (the model's real messages carry their own, which
// calibration measures as per-hop overhead). Compute stays nominal
// (LayerForwardS x timeScale): calibration replaces it with measured
// times. The workload takes the model's layers and microbatch size.
//
// Gradients of the all-reduce travel over the same scaled links: the
// emulation prices every byte the workers send, not only activations.
func ScaleLinks(c *costmodel.Cluster, timeScale float64, m model.Config, samples int) (*costmodel.Cluster, error) {
	if !(timeScale > 0) || math.IsInf(timeScale, 0) {
		return nil, fmt.Errorf("coordinator: link scale %v, want a finite number > 0", timeScale)
	}
	if samples < 1 {
		return nil, fmt.Errorf("coordinator: microbatch size %d, want >= 1", samples)
	}
	out, err := cloneCluster(c)
	if err != nil {
		return nil, err
	}
	refSamples := 1
	if out.Workload != nil && out.Workload.SamplesPerMicrobatch > 0 {
		refSamples = out.Workload.SamplesPerMicrobatch
	}
	refBytes := float64(refSamples)*out.Compute.ActivationBytesPerSample + out.Compute.MessageHeaderBytes
	bytes := float64(samples) * ActivationBytes(m)
	bw := timeScale
	if refBytes > 0 {
		bw = bytes / refBytes / timeScale
	}
	scale := func(l *costmodel.Link) {
		l.LatencyMS *= timeScale
		l.BandwidthGiBs *= bw
	}
	for _, l := range []*costmodel.Link{out.LocalLink, out.DefaultLink} {
		if l != nil {
			scale(l)
		}
	}
	for i := range out.Links {
		scale(&out.Links[i].Link)
	}
	for _, row := range out.Delays {
		for j := range row {
			row[j] *= timeScale
		}
	}
	out.HopOverheadS *= timeScale
	out.Compute.LayerForwardS *= timeScale
	out.Compute.ActivationBytesPerSample = ActivationBytes(m)
	out.Compute.MessageHeaderBytes = 0
	if out.Workload != nil {
		out.Workload.Layers = m.WithDefaults().Layers
		out.Workload.SamplesPerMicrobatch = samples
	}
	out.Name = fmt.Sprintf("%s-x%g", c.Name, timeScale)
	if err := out.Validate(); err != nil {
		return nil, fmt.Errorf("coordinator: scaled cluster: %w", err)
	}
	return out, nil
}

// cloneCluster deep-copies c (costmodel.Cluster.Clone).
func cloneCluster(c *costmodel.Cluster) (*costmodel.Cluster, error) {
	out, err := c.Clone()
	if err != nil {
		return nil, fmt.Errorf("coordinator: %w", err)
	}
	return out, nil
}

// EncodeCluster is c as the YAML that workers (link_shaping_yaml) and
// `stagecoach sim --cluster` read.
func EncodeCluster(c *costmodel.Cluster) ([]byte, error) {
	b, err := yaml.Marshal(c)
	if err != nil {
		return nil, fmt.Errorf("coordinator: encode cluster %q: %w", c.Name, err)
	}
	if _, err := costmodel.ParseCluster(b); err != nil {
		return nil, fmt.Errorf("coordinator: cluster %q does not parse back: %w", c.Name, err)
	}
	return b, nil
}

// planningCosts is the cost model the planner uses: the calibrated one
// when there is one, else the emulated cluster, else nil (uniform).
func (c *Config) planningCosts() (*costmodel.Cluster, error) {
	if c.Costs != nil {
		return c.Costs, nil
	}
	if len(c.Cluster) == 0 {
		return nil, nil
	}
	cl, err := costmodel.ParseCluster(c.Cluster)
	if err != nil {
		return nil, fmt.Errorf("coordinator: cluster: %w", err)
	}
	return cl, nil
}

// clusterStageSizes is the cluster workload's nodes per stage when it
// fits the job (same worker count and stage count), else nil.
func (c *Config) clusterStageSizes() []int {
	if len(c.Cluster) == 0 {
		return nil
	}
	cl, err := costmodel.ParseCluster(c.Cluster)
	if err != nil || cl.Workload == nil {
		return nil
	}
	sizes := cl.Workload.StageNodes
	total := 0
	for _, k := range sizes {
		total += k
	}
	if total != c.Workers || (c.Stages != 0 && c.Stages != c.Workers && len(sizes) != c.Stages) {
		return nil
	}
	return append([]int(nil), sizes...)
}

// skipPipeInput builds the SkipPipe planner's input for the job over the
// named nodes from the planning cost model: measured (or nominal) compute
// per node, the emulated links priced for this model's microbatch, the
// cluster's stages when its workload fits the job. prev, when set, fixes
// the placement to prev's (a replan keeps every node in its stage, so the
// workers keep their trained shards).
func skipPipeInput(cfg *Config, names []string, prev *scheduler.Plan) (scheduler.SkipPipeConfig, error) {
	var sc scheduler.SkipPipeConfig
	sizes := cfg.clusterStageSizes()
	if sizes == nil {
		per := cfg.Workers / cfg.Stages
		sizes = make([]int, cfg.Stages)
		for i := range sizes {
			sizes[i] = per
		}
	}
	origins := sizes[0]
	if cfg.Train.Microbatches%origins != 0 {
		return sc, fmt.Errorf("%d microbatches do not split evenly over the %d origins of stage 0", cfg.Train.Microbatches, origins)
	}
	n := len(names)
	ns := len(sizes)
	sc = scheduler.SkipPipeConfig{
		NodeNames: names, StageSizes: sizes, MicrobatchesPerOrigin: cfg.Train.Microbatches / origins,
		Layers: cfg.Train.Model.Layers, Samples: cfg.Train.MicrobatchSize, CollisionAware: true,
		Seed: int64(cfg.Train.Model.Seed), Rules: scheduler.DefaultSkipRules(ns),
	}
	costs, err := cfg.planningCosts()
	if err != nil {
		return sc, err
	}
	if costs != nil {
		// SkipPipe plans hold the embedding and head on stage 0: size
		// the all-reduces for that split, whatever plan calibrated.
		if costs, err = cloneCluster(costs); err != nil {
			return sc, err
		}
		if costs.Compute.StageGradientBytes, err = costmodel.GradientBytesOfStages(cfg.Train.Model, ns, model.HeadFirst); err != nil {
			return sc, err
		}
	}
	if costs == nil {
		// No cost model: a uniform loopback network.
		sc.Delay, sc.ForwardS = make([][]float64, n), make([]float64, n)
		for i := range n {
			sc.Delay[i] = make([]float64, n)
			for j := range n {
				if i != j {
					sc.Delay[i][j] = 1e-3
				}
			}
			sc.ForwardS[i] = 1e-2
		}
		sc.Memory = cfg.Train.Microbatches
	} else {
		mem := 0
		if costs.Workload != nil {
			mem = costs.Workload.Memory
		}
		sc, err = costmodel.SkipPipeInput(costs, costmodel.SkipPipeJob{
			Names: names, StageSizes: sizes, Microbatches: cfg.Train.Microbatches,
			Layers: cfg.Train.Model.Layers, Samples: cfg.Train.MicrobatchSize,
			PayloadBytes: float64(cfg.Train.MicrobatchSize) * ActivationBytes(cfg.Train.Model), Memory: mem,
		})
		if err != nil {
			return sc, err
		}
		sc.CollisionAware, sc.Seed = true, int64(cfg.Train.Model.Seed)
		if simr := cfg.Simulator; simr != nil {
			sc.Objective = func(p *scheduler.Plan) float64 {
				// Priced with the all-reduces the final plan will get
				// (checkPlan chooses them the same way).
				if _, err := costmodel.ChooseAllReduce(p, costs); err != nil {
					return math.Inf(1)
				}
				r, err := simr.Simulate(p, costs, false)
				if err != nil {
					return math.Inf(1)
				}
				return r.IterationTimeS
			}
		}
	}
	if prev != nil {
		byName := map[string]int{}
		for i, name := range names {
			byName[name] = i
		}
		parts := make([][]int, len(prev.Stages))
		for s, ws := range prev.StageWorkers() {
			for _, w := range ws {
				parts[s] = append(parts[s], byName[prev.Workers[w].Node])
			}
		}
		sc.Partition = parts
		return sc, nil
	}
	// One placement for every variant (skippipe and its full pipeline)
	// so that they compare on the same cluster layout.
	sc.RefinePlacement = true
	pl, err := scheduler.SkipPipePlacement(sc)
	if err != nil {
		return sc, err
	}
	sc.Partition, sc.RefinePlacement = pl.Partition, false
	if costs == nil {
		return sc, nil
	}
	// The refinement judges placements by the pipeline alone; the
	// all-reduces can undo its gain (two replicas of a stage joined by a
	// slow link, e.g. the table's NL-London). Keep the refined placement
	// only if the SkipPipe plan over it simulates faster, all-reduces
	// included, than over Place's.
	sc.RefinePlacement = false
	sc.Partition = nil
	unrefined, err := scheduler.SkipPipePlacement(sc)
	if err != nil {
		return sc, err
	}
	best, bestS := pl.Partition, math.Inf(1)
	for _, cand := range [][][]int{pl.Partition, unrefined.Partition} {
		try := sc
		try.Partition = cand
		p, _, err := scheduler.PlanSkipPipeVariant(scheduler.SkipPipeCA, try)
		if err != nil {
			continue
		}
		if v := sc.Objective(p); v < bestS {
			best, bestS = cand, v
		}
	}
	sc.Partition = best
	return sc, nil
}

// ForPlan is costmodel.ForPlan: k with p's per-stage gradient sizes
// for model m.
func ForPlan(k *costmodel.Cluster, p *scheduler.Plan, m model.Config) (*costmodel.Cluster, error) {
	return costmodel.ForPlan(k, p, m)
}
