package costmodel

import (
	"fmt"
	"math"
	"sort"
)

// Cluster is the cost model the simulator runs a Plan against: the nodes,
// their compute speed and memory, the links between them, and what the
// model's work and tensors cost.
type Cluster struct {
	Name string `yaml:"name"`
	// Compute costs of the model on a node of speed 1.
	Compute Compute `yaml:"compute"`
	// Nodes lists the machines. Plan workers are matched to nodes by name.
	Nodes []Node `yaml:"nodes"`
	// AnyNode accepts plan workers on nodes the cluster does not list,
	// giving them speed 1 and unbounded memory (homogeneous clusters).
	AnyNode bool `yaml:"any_node,omitempty"`
	// DefaultLink joins regions that Links does not list. Without it every
	// pair of regions in use must be listed.
	DefaultLink *Link `yaml:"default_link,omitempty"`
	// LocalLink joins two nodes of the same region (default: free).
	LocalLink *Link `yaml:"local_link,omitempty"`
	// Links between regions, symmetric.
	Links []RegionLink `yaml:"links,omitempty"`
	// Delays, when set, gives the time of one microbatch's hop between
	// every pair of nodes, in seconds, in the order of Nodes: link
	// occupancy with no latency after it (see Hop). It replaces Links
	// (the SkipPipe authors' files carry such a matrix).
	Delays [][]float64 `yaml:"delays,omitempty"`
	// HopOverheadS is a fixed cost added to every hop between nodes.
	HopOverheadS float64 `yaml:"hop_overhead_s,omitempty"`
	// Workload, when set, describes the job a preset was made for.
	Workload *Workload `yaml:"workload,omitempty"`
	// Model is the model whose memory is counted in bytes (nil: the
	// default model of `stagecoach train`; see StageMemories).
	Model *ModelMemory `yaml:"model,omitempty"`
	// DefaultMemoryGiB is the device memory of nodes that give no
	// memory_gib, and of any_node's unlisted nodes (0: unbounded).
	DefaultMemoryGiB float64 `yaml:"default_memory_gib,omitempty"`

	nodeIndex map[string]int
	links     map[[2]string]Link
}

// Compute says what the model's actions cost on a node of speed 1.
type Compute struct {
	// LayerForwardS is the forward time of one layer for one sample.
	LayerForwardS float64 `yaml:"layer_forward_s"`
	// StageForwardS optionally overrides LayerForwardS per stage: forward
	// seconds per sample of the whole stage (from calibration).
	StageForwardS []float64 `yaml:"stage_forward_s,omitempty"`
	// BackwardRatio is a full backward's time over the forward's (2).
	BackwardRatio float64 `yaml:"backward_ratio"`
	// InputGradRatio and WeightGradRatio price the split backward (1, 1).
	InputGradRatio  float64 `yaml:"input_grad_ratio"`
	WeightGradRatio float64 `yaml:"weight_grad_ratio"`
	// FBOverlap is the fraction of the shorter half of an overlapped
	// forward+backward pair (scheduler.Overlapped, DualPipe) hidden under
	// the longer: the pair costs F + B - FBOverlap*min(F, B). 0, the
	// default, runs the halves back to back, as Stagecoach's workers do;
	// 1 is perfect overlap, max(F, B).
	FBOverlap float64 `yaml:"fb_overlap,omitempty"`
	// LossLayers prices the head and loss in layer-forwards (0).
	LossLayers float64 `yaml:"loss_layers,omitempty"`
	// OptimizerLayerS is the optimizer time per layer held.
	OptimizerLayerS float64 `yaml:"optimizer_layer_s,omitempty"`
	// ActivationBytesPerSample is the size of one sample's activations
	// (gradients sent backward have the same size).
	ActivationBytesPerSample float64 `yaml:"activation_bytes_per_sample"`
	// MessageHeaderBytes is added to every tensor message (framing).
	MessageHeaderBytes float64 `yaml:"message_header_bytes,omitempty"`
	// GradientBytesPerLayer is what one layer's gradients weigh in an
	// all-reduce. 0 leaves the all-reduce out of the model (it costs
	// nothing), as the SkipPipe authors' simulator does.
	GradientBytesPerLayer float64 `yaml:"gradient_bytes_per_layer"`
	// StageGradientBytes optionally gives each stage's gradient bytes,
	// overriding GradientBytesPerLayer (embeddings and head make the
	// stages that hold them heavier; calibration fills it per plan).
	StageGradientBytes []float64 `yaml:"stage_gradient_bytes,omitempty"`
}

// Node is one machine.
type Node struct {
	Name   string `yaml:"name"`
	Region string `yaml:"region,omitempty"`
	// Speed divides compute times: 2 is twice as fast as nominal. 0 means 1.
	Speed float64 `yaml:"speed"`
	// Memory is the most microbatch activations the node holds (0: unbounded).
	Memory int `yaml:"memory,omitempty"`
	// MemoryGiB is the node's device memory in GiB (0: DefaultMemoryGiB,
	// or unbounded): a schedule whose workers on it need more, counted
	// in bytes (StageMemories), is infeasible.
	MemoryGiB float64 `yaml:"memory_gib,omitempty"`
	// EgressGiBs is the bandwidth of the node's network interface, shared
	// by all its outgoing transfers: each one holds it for bytes over this
	// bandwidth, one after another, on top of its link's busy time (see
	// Hop). 0 means unlimited: every directed link is independent. It is
	// what makes a one-shot all-reduce (n-1 whole gradients out of every
	// node) cost more than a ring on fast links.
	EgressGiBs float64 `yaml:"egress_gib_s,omitempty"`
}

// Link is a latency and a bandwidth.
type Link struct {
	LatencyMS     float64 `yaml:"latency_ms"`
	BandwidthGiBs float64 `yaml:"bandwidth_gib_s"`
}

// RegionLink is a symmetric link between two regions.
type RegionLink struct {
	A    string `yaml:"a"`
	B    string `yaml:"b"`
	Link `yaml:",inline"`
}

// Workload is the job shape a preset comes with.
type Workload struct {
	Layers                int   `yaml:"layers"`
	StageNodes            []int `yaml:"stage_nodes"`
	SamplesPerMicrobatch  int   `yaml:"samples_per_microbatch"`
	MicrobatchesPerOrigin int   `yaml:"microbatches_per_origin"`
	Memory                int   `yaml:"memory,omitempty"`
}

// Validate checks the cost model and builds its lookups. Errors name the
// field at fault.
func (c *Cluster) Validate() error {
	k := &c.Compute
	if k.BackwardRatio == 0 {
		k.BackwardRatio = 2
	}
	if k.InputGradRatio == 0 {
		k.InputGradRatio = 1
	}
	if k.WeightGradRatio == 0 {
		k.WeightGradRatio = 1
	}
	for _, f := range []struct {
		name string
		v    float64
	}{
		{"compute.layer_forward_s", k.LayerForwardS}, {"compute.backward_ratio", k.BackwardRatio},
		{"compute.input_grad_ratio", k.InputGradRatio}, {"compute.weight_grad_ratio", k.WeightGradRatio},
		{"compute.loss_layers", k.LossLayers}, {"compute.optimizer_layer_s", k.OptimizerLayerS},
		{"compute.activation_bytes_per_sample", k.ActivationBytesPerSample},
		{"compute.gradient_bytes_per_layer", k.GradientBytesPerLayer}, {"compute.message_header_bytes", k.MessageHeaderBytes}, {"hop_overhead_s", c.HopOverheadS},
		{"default_memory_gib", c.DefaultMemoryGiB},
	} {
		name, v := f.name, f.v
		if v < 0 || math.IsNaN(v) || math.IsInf(v, 0) {
			return fmt.Errorf("cluster %q: %s is %v, want a finite number >= 0", c.Name, name, v)
		}
	}
	if k.FBOverlap < 0 || k.FBOverlap > 1 || math.IsNaN(k.FBOverlap) {
		return fmt.Errorf("cluster %q: compute.fb_overlap is %v, want a fraction in [0, 1]", c.Name, k.FBOverlap)
	}
	for i, v := range k.StageGradientBytes {
		if v < 0 || math.IsNaN(v) || math.IsInf(v, 0) {
			return fmt.Errorf("cluster %q: compute.stage_gradient_bytes[%d] is %v, want >= 0", c.Name, i, v)
		}
	}
	for i, v := range k.StageForwardS {
		if v < 0 || math.IsNaN(v) || math.IsInf(v, 0) {
			return fmt.Errorf("cluster %q: compute.stage_forward_s[%d] is %v, want >= 0", c.Name, i, v)
		}
	}
	if c.Model != nil {
		if err := c.Model.WithDefaults().check("model"); err != nil {
			return fmt.Errorf("cluster %q: %v", c.Name, err)
		}
	}
	if len(c.Nodes) == 0 && !c.AnyNode {
		return fmt.Errorf("cluster %q: no nodes (list them under nodes, or set any_node)", c.Name)
	}
	c.nodeIndex = make(map[string]int, len(c.Nodes))
	for i := range c.Nodes {
		n := &c.Nodes[i]
		if n.Name == "" {
			return fmt.Errorf("cluster %q: nodes[%d] has no name", c.Name, i)
		}
		if _, dup := c.nodeIndex[n.Name]; dup {
			return fmt.Errorf("cluster %q: node %q listed twice", c.Name, n.Name)
		}
		if n.Speed < 0 || math.IsNaN(n.Speed) || math.IsInf(n.Speed, 0) {
			return fmt.Errorf("cluster %q: node %q speed is %v, want > 0", c.Name, n.Name, n.Speed)
		}
		if n.Speed == 0 {
			n.Speed = 1
		}
		if n.Memory < 0 {
			return fmt.Errorf("cluster %q: node %q memory is %d, want >= 0", c.Name, n.Name, n.Memory)
		}
		if n.MemoryGiB < 0 || math.IsNaN(n.MemoryGiB) || math.IsInf(n.MemoryGiB, 0) {
			return fmt.Errorf("cluster %q: node %q memory_gib is %v, want a finite number >= 0", c.Name, n.Name, n.MemoryGiB)
		}
		if n.EgressGiBs < 0 || math.IsNaN(n.EgressGiBs) || math.IsInf(n.EgressGiBs, 0) {
			return fmt.Errorf("cluster %q: node %q egress_gib_s is %v, want a finite number >= 0", c.Name, n.Name, n.EgressGiBs)
		}
		c.nodeIndex[n.Name] = i
	}
	for _, l := range []*Link{c.DefaultLink, c.LocalLink} {
		if l != nil {
			if err := l.check(c.Name, "default_link/local_link"); err != nil {
				return err
			}
		}
	}
	c.links = make(map[[2]string]Link, len(c.Links))
	for i, rl := range c.Links {
		if rl.A == "" || rl.B == "" {
			return fmt.Errorf("cluster %q: links[%d] needs both regions a and b", c.Name, i)
		}
		if err := rl.check(c.Name, fmt.Sprintf("links[%d] (%s-%s)", i, rl.A, rl.B)); err != nil {
			return err
		}
		c.links[[2]string{rl.A, rl.B}] = rl.Link
		c.links[[2]string{rl.B, rl.A}] = rl.Link
	}
	if len(c.Delays) > 0 {
		if len(c.Delays) != len(c.Nodes) {
			return fmt.Errorf("cluster %q: delays has %d rows, want one per node (%d)", c.Name, len(c.Delays), len(c.Nodes))
		}
		for i, row := range c.Delays {
			if len(row) != len(c.Nodes) {
				return fmt.Errorf("cluster %q: delays[%d] has %d entries, want %d", c.Name, i, len(row), len(c.Nodes))
			}
			for j, v := range row {
				if v < 0 || math.IsNaN(v) || math.IsInf(v, 0) {
					return fmt.Errorf("cluster %q: delays[%d][%d] is %v, want >= 0", c.Name, i, j, v)
				}
			}
		}
		return nil
	}
	if c.DefaultLink == nil {
		// Every pair of distinct regions must be joined.
		regions := c.regions()
		for i, a := range regions {
			for _, b := range regions[i+1:] {
				if _, ok := c.links[[2]string{a, b}]; !ok {
					return fmt.Errorf("cluster %q: no link between regions %q and %q (add it under links or set default_link)", c.Name, a, b)
				}
			}
		}
	}
	return nil
}

func (l Link) check(cluster, where string) error {
	if l.LatencyMS < 0 || math.IsNaN(l.LatencyMS) || math.IsInf(l.LatencyMS, 0) {
		return fmt.Errorf("cluster %q: %s latency_ms is %v, want >= 0", cluster, where, l.LatencyMS)
	}
	if !(l.BandwidthGiBs > 0) || math.IsInf(l.BandwidthGiBs, 0) {
		return fmt.Errorf("cluster %q: %s bandwidth_gib_s is %v, want > 0", cluster, where, l.BandwidthGiBs)
	}
	return nil
}

func (c *Cluster) regions() []string {
	seen := map[string]bool{}
	var out []string
	for _, n := range c.Nodes {
		if !seen[n.Region] {
			seen[n.Region] = true
			out = append(out, n.Region)
		}
	}
	sort.Strings(out)
	return out
}

// Lookup returns the node a plan worker named name runs on and its index
// in Nodes (-1 for a node any_node accepts without listing it). Call
// Validate first.
func (c *Cluster) Lookup(name string) (int, *Node, error) {
	if i, ok := c.nodeIndex[name]; ok {
		return i, &c.Nodes[i], nil
	}
	if c.AnyNode {
		return -1, &Node{Name: name, Speed: 1}, nil
	}
	return 0, nil, fmt.Errorf("cluster %q has no node %q", c.Name, name)
}
