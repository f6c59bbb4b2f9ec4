package skippipe

import (
	"fmt"
	"math"

	"stagecoach/scheduler"
)

// Config is the input of the SkipPipe planners: the nodes, how many go
// in each stage, what links and compute cost, and the path rules. Node i
// of every per-node slice is NodeNames[i]. The planners copy what they
// keep; the config is not modified.
type Config struct {
	// NodeNames names the nodes; plan workers carry these names.
	NodeNames []string
	// StageSizes is the number of nodes per stage, stage 0 first. Every
	// stage-0 node is an origin: it starts MicrobatchesPerOrigin paths.
	StageSizes []int
	// Partition optionally fixes the placement: node indices per stage,
	// matching StageSizes. Nil means the planner places nodes with Place.
	Partition [][]int
	// RefinePlacement lets the skipping planners improve the placement
	// (Partition, or Place's) by their own timing estimate; the plan's
	// stats report the placement used.
	RefinePlacement bool
	// Delay[a][b] is the time in seconds from node a starting to send one
	// microbatch's activations (or gradients) to node b until they have
	// arrived. It need not be symmetric.
	Delay [][]float64
	// LinkBusy optionally gives the part of Delay[a][b] during which the
	// directed link a->b is occupied (transfers on one link queue behind
	// each other). Nil: links never queue (pure delay).
	LinkBusy [][]float64
	// ForwardS is each node's forward time of one microbatch through one
	// stage (nodes may differ in speed).
	ForwardS []float64
	// BackwardRatio is a backward's time over the forward's (0: 1.5).
	BackwardRatio float64
	// LossRatio prices the head and loss on the origin as a fraction of the
	// origin's stage forward (0: 0.25).
	LossRatio float64
	// Memory is how many microbatch paths may pass through one non-origin
	// node (the authors' node memory in agents times microbatches per
	// agent: 3 x 2 = 6 in the reference). A stage's cap is its node count
	// times this. Must be >= 1.
	Memory int
	// MicrobatchesPerOrigin is how many microbatches each stage-0 node
	// starts (6 in the reference).
	MicrobatchesPerOrigin int
	// Layers is the model's layer count, spread evenly over the stages
	// (0: one per stage).
	Layers int
	// Samples is the sequences per microbatch (0: 1).
	Samples int
	// Rules are the path rules. A zero PathStages means
	// scheduler.DefaultSkipRules(len(StageSizes)); a zero MaxPerWorker
	// means Memory.
	Rules scheduler.SkipRules
	// CollisionAware selects TC2 for Plan: the search prices node
	// contention (no forward-forward or forward-backward overlap). Off, it
	// plans each microbatch as if it had the nodes to itself.
	CollisionAware bool
	// Seed drives every random choice; the same config gives the same plan.
	Seed int64
	// Iterations bounds the local search (0: a default that scales with
	// the problem).
	Iterations int
	// Objective, when set, scores a complete plan (lower is better), e.g.
	// the simulator's iteration time. The planner then picks its final
	// plan, and spends ObjectiveEvals on further search, by this score;
	// without it the planner uses its own timing estimate throughout.
	Objective func(*scheduler.Plan) float64
	// ObjectiveEvals bounds calls of Objective during search (0: 150).
	ObjectiveEvals int
}

// spNet is a checked Config with defaults applied and the
// placement fixed: the immutable input of one search.
type spNet struct {
	names      []string
	parts      [][]int // node indices per stage
	stageOf    []int
	delay      [][]float64
	busy       [][]float64 // nil: pure delay
	fwd        []float64
	bwdRatio   float64
	lossRatio  float64
	cap        int // paths per non-origin node
	rules      scheduler.SkipRules
	origins    []int // stage-0 nodes in partition order
	mbOrigin   []int // origin node of every microbatch
	layers     int
	samples    int
	iterations int
}

// Check reports the first thing wrong with the config, naming the field
// at fault; the planners check their config with it.
func (c *Config) Check() error {
	n := len(c.NodeNames)
	if n < 2 {
		return fmt.Errorf("skippipe config: node_names has %d nodes, want >= 2", n)
	}
	if n > scheduler.MaxWorkers {
		return fmt.Errorf("skippipe config: %d nodes, at most %d", n, scheduler.MaxWorkers)
	}
	seen := make(map[string]int, n)
	for i, name := range c.NodeNames {
		if name == "" {
			return fmt.Errorf("skippipe config: node_names[%d] is empty", i)
		}
		if j, dup := seen[name]; dup {
			return fmt.Errorf("skippipe config: node_names[%d] %q repeats node_names[%d]", i, name, j)
		}
		seen[name] = i
	}
	ns := len(c.StageSizes)
	if ns < 2 || ns > scheduler.MaxStages {
		return fmt.Errorf("skippipe config: stage_sizes has %d stages, want 2..%d", ns, scheduler.MaxStages)
	}
	total := 0
	for s, k := range c.StageSizes {
		if k < 1 {
			return fmt.Errorf("skippipe config: stage_sizes[%d] is %d, want >= 1", s, k)
		}
		total += k
	}
	if total != n {
		return fmt.Errorf("skippipe config: stage_sizes sum to %d, but there are %d nodes", total, n)
	}
	if err := checkMatrix("delay", c.Delay, n, true); err != nil {
		return err
	}
	if c.LinkBusy != nil {
		if err := checkMatrix("link_busy", c.LinkBusy, n, true); err != nil {
			return err
		}
		for a := range n {
			for b := range n {
				if c.LinkBusy[a][b] > c.Delay[a][b] {
					return fmt.Errorf("skippipe config: link_busy[%d][%d] is %v, more than delay %v", a, b, c.LinkBusy[a][b], c.Delay[a][b])
				}
			}
		}
	}
	if len(c.ForwardS) != n {
		return fmt.Errorf("skippipe config: forward_s has %d entries, want one per node (%d)", len(c.ForwardS), n)
	}
	for i, v := range c.ForwardS {
		if !(v > 0) || math.IsInf(v, 0) {
			return fmt.Errorf("skippipe config: forward_s[%d] is %v, want a finite number > 0", i, v)
		}
	}
	for _, f := range []struct {
		name string
		v    float64
	}{{"backward_ratio", c.BackwardRatio}, {"loss_ratio", c.LossRatio}} {
		if f.v < 0 || math.IsNaN(f.v) || math.IsInf(f.v, 0) {
			return fmt.Errorf("skippipe config: %s is %v, want a finite number >= 0", f.name, f.v)
		}
	}
	if c.Memory < 1 {
		return fmt.Errorf("skippipe config: memory is %d, want >= 1", c.Memory)
	}
	if c.MicrobatchesPerOrigin < 1 {
		return fmt.Errorf("skippipe config: microbatches_per_origin is %d, want >= 1", c.MicrobatchesPerOrigin)
	}
	if m := c.MicrobatchesPerOrigin * c.StageSizes[0]; m > scheduler.MaxMicrobatches || m*ns > scheduler.MaxStageMicrobatchCells {
		return fmt.Errorf("skippipe config: %d microbatches over %d stages is too large", m, ns)
	}
	if c.Layers < 0 || (c.Layers > 0 && c.Layers < ns) {
		return fmt.Errorf("skippipe config: layers is %d, want 0 or >= %d (one per stage)", c.Layers, ns)
	}
	if c.Samples < 0 {
		return fmt.Errorf("skippipe config: samples is %d, want >= 0", c.Samples)
	}
	if c.Iterations < 0 || c.ObjectiveEvals < 0 {
		return fmt.Errorf("skippipe config: iterations and objective_evals must be >= 0")
	}
	r := c.rules()
	if r.PathStages < 2 || r.PathStages > ns {
		return fmt.Errorf("skippipe config: rules.path_stages is %d, want 2..%d", r.PathStages, ns)
	}
	if r.MaxSwaps < 0 || r.SwapDistance < 0 || r.MaxJump < 1 || r.MaxPerWorker < 0 {
		return fmt.Errorf("skippipe config: rules need max_swaps >= 0, swap_distance >= 0, max_jump >= 1, max_per_worker >= 0")
	}
	// Every path visits PathStages-1 non-first stages; the caps must hold them.
	demand := c.MicrobatchesPerOrigin * c.StageSizes[0] * (r.PathStages - 1)
	supply := 0
	for _, k := range c.StageSizes[1:] {
		supply += k * r.MaxPerWorker
	}
	if demand > supply {
		return fmt.Errorf("skippipe config: %d microbatches x %d visited stages need %d visits, but memory allows %d (raise memory or lower rules.path_stages)", c.MicrobatchesPerOrigin*c.StageSizes[0], r.PathStages-1, demand, supply)
	}
	if c.Partition != nil {
		if err := checkPartition(c.Partition, c.StageSizes, n); err != nil {
			return err
		}
	}
	return nil
}

func (c *Config) rules() scheduler.SkipRules {
	r := c.Rules
	if r.PathStages == 0 {
		r = scheduler.DefaultSkipRules(len(c.StageSizes))
		r.MaxPerWorker = c.Rules.MaxPerWorker
	}
	if r.MaxPerWorker == 0 {
		r.MaxPerWorker = c.Memory
	}
	return r
}

func checkMatrix(name string, m [][]float64, n int, zeroDiag bool) error {
	if len(m) != n {
		return fmt.Errorf("skippipe config: %s has %d rows, want one per node (%d)", name, len(m), n)
	}
	for a, row := range m {
		if len(row) != n {
			return fmt.Errorf("skippipe config: %s[%d] has %d entries, want %d", name, a, len(row), n)
		}
		for b, v := range row {
			if v < 0 || math.IsNaN(v) || math.IsInf(v, 0) {
				return fmt.Errorf("skippipe config: %s[%d][%d] is %v, want a finite number >= 0", name, a, b, v)
			}
		}
	}
	return nil
}

func checkPartition(parts [][]int, sizes []int, n int) error {
	if len(parts) != len(sizes) {
		return fmt.Errorf("skippipe config: partition has %d stages, stage_sizes %d", len(parts), len(sizes))
	}
	used := make([]bool, n)
	for s, p := range parts {
		if len(p) != sizes[s] {
			return fmt.Errorf("skippipe config: partition[%d] has %d nodes, stage_sizes[%d] is %d", s, len(p), s, sizes[s])
		}
		for _, v := range p {
			if v < 0 || v >= n {
				return fmt.Errorf("skippipe config: partition[%d] names node %d, want 0..%d", s, v, n-1)
			}
			if used[v] {
				return fmt.Errorf("skippipe config: partition places node %d twice", v)
			}
			used[v] = true
		}
	}
	return nil
}

// newNet checks c and fixes the placement (parts: node indices per stage).
func newNet(c *Config, parts [][]int) *spNet {
	n := len(c.NodeNames)
	nt := &spNet{
		names: c.NodeNames, delay: c.Delay, busy: c.LinkBusy, fwd: c.ForwardS,
		bwdRatio: c.BackwardRatio, lossRatio: c.LossRatio, rules: c.rules(),
		layers: c.Layers, samples: c.Samples, iterations: c.Iterations,
	}
	if nt.bwdRatio == 0 {
		nt.bwdRatio = 1.5
	}
	if nt.lossRatio == 0 {
		nt.lossRatio = 0.25
	}
	if nt.layers == 0 {
		nt.layers = len(c.StageSizes)
	}
	if nt.samples == 0 {
		nt.samples = 1
	}
	nt.cap = nt.rules.MaxPerWorker
	nt.parts = make([][]int, len(parts))
	nt.stageOf = make([]int, n)
	for s, p := range parts {
		nt.parts[s] = append([]int(nil), p...)
		for _, v := range p {
			nt.stageOf[v] = s
		}
	}
	nt.origins = nt.parts[0]
	for _, o := range nt.origins {
		for range c.MicrobatchesPerOrigin {
			nt.mbOrigin = append(nt.mbOrigin, o)
		}
	}
	return nt
}
