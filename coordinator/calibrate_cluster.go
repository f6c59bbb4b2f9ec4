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

// ForPlan is costmodel.ForPlan: k with p's per-stage gradient sizes
// for model m.
func ForPlan(k *costmodel.Cluster, p *scheduler.Plan, m model.Config) (*costmodel.Cluster, error) {
	return costmodel.ForPlan(k, p, m)
}
