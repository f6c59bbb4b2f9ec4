package scheduler

import (
	"fmt"
	"strconv"
	"strings"
)

// FormatVersion is the version of the Plan JSON format written by this
// package. Decoding refuses any other version.
const FormatVersion = 1

// Plan is everything a pipeline iteration does: the topology (which worker
// holds which stage), the path of every microbatch, and the ordered program
// of every worker. It is immutable once built; timings live in the
// simulator's or runtime's results, never here.
type Plan struct {
	Version   int    `json:"version"`
	Schedule  string `json:"schedule"`
	Iteration int64  `json:"iteration"`
	// Epoch is bumped whenever membership changes; messages tagged with an
	// older epoch are rejected by workers.
	Epoch int64 `json:"epoch"`
	// Stages are the model's layer ranges in model order. For interleaved
	// schedules each stage is one virtual chunk.
	Stages []Stage `json:"stages"`
	// HeadStage is the stage that owns the final norm, output head and
	// loss: the last stage for classic pipelines, stage 0 for SkipPipe.
	HeadStage int      `json:"head_stage"`
	Workers   []Worker `json:"workers"`
	// Recompute means every backward first recomputes its forward
	// (activation checkpointing): only stage inputs are kept in flight.
	Recompute    bool         `json:"recompute,omitempty"`
	Microbatches []Microbatch `json:"microbatches"`
	// Programs[w] is the ordered list of actions worker w executes.
	Programs [][]Action `json:"programs"`
	// Skip, when set, says paths may skip and swap stages under these rules.
	Skip *SkipRules `json:"skip,omitempty"`
}

// Stage is a contiguous range of model layers [FirstLayer, FirstLayer+Layers).
type Stage struct {
	FirstLayer int `json:"first_layer"`
	Layers     int `json:"layers"`
	// AllReduce is how the stage's replicas sum their gradients:
	// AllReduceRing (the empty string means the same), AllReduceDirect or
	// AllReduceOrdered.
	// It is policy, chosen by whoever plans with a cost model (see
	// sim.ChooseAllReduce); the simulator prices and the workers run what
	// it says. Stages with one replica ignore it.
	AllReduce string `json:"all_reduce,omitempty"`
}

// All-reduce algorithms of a stage (Stage.AllReduce).
const (
	// AllReduceRing is reduce-scatter then all-gather around the
	// replicas in replica order: 2(n-1) sequential hops, each carrying
	// 1/n of the gradient. It moves the least data per replica.
	AllReduceRing = "ring"
	// AllReduceDirect is one-shot: every replica sends its whole
	// gradient to every other at once and sums all n itself. One hop
	// (per directed link, all links at once) instead of 2(n-1) sequential
	// ones, at n-1 times the ring's traffic per replica: the cheaper
	// choice when hops are latency- or overhead-bound.
	AllReduceDirect = "direct"
	// AllReduceOrdered reproduces one process's summation exactly: the
	// running sum of the stage's per-microbatch gradient contributions
	// travels between the replicas in global microbatch order (see
	// OrderedSegments), each adding its own microbatches' in turn, and the
	// replica holding the last sends the total to the others. Sequential
	// hops carrying the whole gradient, but the result is bit for bit the
	// single-process trainer's: the classic schedules use it for
	// replicated stages.
	AllReduceOrdered = "ordered"
)

// Segment is a run of consecutive microbatches (in microbatch order) that
// one worker computes on a stage.
type Segment struct {
	Worker       int
	Microbatches []int
}

// OrderedSegments lists the microbatches visiting stage in ascending
// order, grouped into runs by the worker that computes them there: the
// hops of an ordered all-reduce (AllReduceOrdered) go from each run's
// worker to the next's.
func (p *Plan) OrderedSegments(stage int) []Segment {
	var out []Segment
	for mb, m := range p.Microbatches {
		for _, h := range m.Path {
			if h.Stage != stage {
				continue
			}
			if n := len(out); n > 0 && out[n-1].Worker == h.Worker {
				out[n-1].Microbatches = append(out[n-1].Microbatches, mb)
			} else {
				out = append(out, Segment{Worker: h.Worker, Microbatches: []int{mb}})
			}
		}
	}
	return out
}

// AllReduceAlgorithm is the stage's all-reduce algorithm with the
// default spelled out: AllReduceRing or AllReduceDirect (or whatever
// unknown value an unvalidated plan carries).
func (s Stage) AllReduceAlgorithm() string {
	if s.AllReduce == "" {
		return AllReduceRing
	}
	return s.AllReduce
}

// Worker is one pipeline process on one node.
type Worker struct {
	// Node names the machine (or region slot) the worker runs on; the cost
	// model looks links and compute speed up by it.
	Node string `json:"node"`
	// Stages held by this worker: one for most schedules, v chunks for
	// interleaved ones.
	Stages []int `json:"stages"`
	// Replica is the data-parallel index of this worker among the workers
	// holding the same stages.
	Replica int `json:"replica"`
	// Memory is the most microbatch activations the worker may hold at
	// once; 0 means unbounded.
	Memory int `json:"memory,omitempty"`
}

// Hop is one visit of a microbatch: the worker and the stage it runs there.
type Hop struct {
	Worker int `json:"worker"`
	Stage  int `json:"stage"`
}

// Microbatch is one slice of the minibatch and the path it takes.
type Microbatch struct {
	// Samples is the number of sequences in the microbatch (uneven
	// microbatches are allowed).
	Samples int `json:"samples"`
	// Path lists the forward visits, origin first. The backward pass
	// retraces it in reverse.
	Path []Hop `json:"path"`
	// LossWorker computes the loss: the last hop for classic pipelines,
	// the origin for SkipPipe.
	LossWorker int `json:"loss_worker"`
}

// SkipRules are the convergence rules of SkipPipe paths (DESIGN section 5).
type SkipRules struct {
	// PathStages is the number of stages every path visits, stage 0
	// included.
	PathStages int `json:"path_stages"`
	// MaxSwaps is the most swaps (visits to a stage lower than the furthest
	// reached so far) allowed in one path.
	MaxSwaps int `json:"max_swaps"`
	// SwapDistance is how far below the furthest stage a swap may go (1:
	// adjacent stages only).
	SwapDistance int `json:"swap_distance"`
	// MaxJump is the most stages one forward hop may advance.
	MaxJump int `json:"max_jump"`
	// MaxPerWorker caps the microbatches whose path passes through one
	// non-origin worker (the reference's node memory times microbatches per
	// agent); a stage's cap is its worker count times this. 0: no cap.
	MaxPerWorker int `json:"max_per_worker,omitempty"`
}

// DefaultSkipRules are the rules the SkipPipe authors' search enforces,
// with 4 of 6 stages visited.
func DefaultSkipRules(stages int) SkipRules {
	n := stages - stages/3
	if n < 1 {
		n = 1
	}
	return SkipRules{PathStages: n, MaxSwaps: 2, SwapDistance: 1, MaxJump: 4}
}

// ActionKind says what an action does. The zero value is invalid.
type ActionKind uint8

// Action kinds. Sends and receives are not actions: they follow from the
// microbatch paths.
const (
	Forward        ActionKind = 1 + iota // forward pass of one stage
	Backward                             // full backward (input and weight gradients)
	BackwardInput                        // input gradient only (zero-bubble split)
	BackwardWeight                       // weight gradient only (zero-bubble split)
	Loss                                 // head and loss on the loss worker
	AllReduce                            // sum gradients among a stage's replicas
	OptimizerStep                        // apply the optimizer to every held stage
	// Overlapped is one microbatch's forward run together with another
	// microbatch's backward (DualPipe's overlapped chunk pair): the
	// action's own fields are the forward, Back the backward (B or I).
	// It starts when both inputs are present and sends both outputs when
	// it finishes. The simulator prices the overlap; a runtime that
	// cannot overlap runs the forward, then the backward.
	Overlapped
)

var kindCodes = [...]string{Forward: "F", Backward: "B", BackwardInput: "I", BackwardWeight: "W", Loss: "L", AllReduce: "R", OptimizerStep: "S", Overlapped: "O"}

var kindNames = [...]string{Forward: "Forward", Backward: "Backward", BackwardInput: "BackwardInput", BackwardWeight: "BackwardWeight", Loss: "Loss", AllReduce: "AllReduce", OptimizerStep: "OptimizerStep", Overlapped: "Overlapped"}

// Valid reports whether k is a known kind.
func (k ActionKind) Valid() bool { return k >= Forward && k <= Overlapped }

// Code is the one-letter code used in JSON and traces.
func (k ActionKind) Code() string {
	if !k.Valid() {
		return "?"
	}
	return kindCodes[k]
}

func (k ActionKind) String() string {
	if !k.Valid() {
		return "ActionKind(" + strconv.Itoa(int(k)) + ")"
	}
	return kindNames[k]
}

// ParseActionKind parses a one-letter code or a full name.
func ParseActionKind(s string) (ActionKind, error) {
	for k := Forward; k <= Overlapped; k++ {
		if s == kindCodes[k] || s == kindNames[k] {
			return k, nil
		}
	}
	return 0, fmt.Errorf("unknown action kind %q (want one of F B I W L R S O)", s)
}

// MarshalText encodes the kind as its one-letter code.
func (k ActionKind) MarshalText() ([]byte, error) {
	if !k.Valid() {
		return nil, fmt.Errorf("invalid action kind %d", k)
	}
	return []byte(kindCodes[k]), nil
}

// UnmarshalText decodes a one-letter code or a full name.
func (k *ActionKind) UnmarshalText(b []byte) error {
	v, err := ParseActionKind(string(b))
	if err != nil {
		return err
	}
	*k = v
	return nil
}

// Action is one step of a worker's program. Microbatch is -1 for AllReduce
// and OptimizerStep; Stage is -1 for OptimizerStep (it steps every held stage).
type Action struct {
	Kind       ActionKind `json:"op"`
	Microbatch int        `json:"mb"`
	Stage      int        `json:"stage"`
	// Back is the backward half of an Overlapped action (whose own
	// microbatch and stage are the forward's); zero, and absent from the
	// JSON, for every other kind.
	Back Half `json:"back,omitzero"`
}

// Half is the backward half of an Overlapped action: a Backward or a
// BackwardInput of another microbatch.
type Half struct {
	Kind       ActionKind `json:"op"`
	Microbatch int        `json:"mb"`
	Stage      int        `json:"stage"`
}

// Halves splits an Overlapped action into its forward and its backward,
// in the order a runtime that cannot overlap runs them. Any other action
// is its own single half (ok false).
func (a Action) Halves() (fwd, bwd Action, ok bool) {
	if a.Kind != Overlapped {
		return a, Action{}, false
	}
	return F(a.Microbatch, a.Stage), Action{Kind: a.Back.Kind, Microbatch: a.Back.Microbatch, Stage: a.Back.Stage}, true
}

// String renders the action as in errors and traces, e.g. "F3@s1"; an
// overlapped pair is its halves joined by "+", e.g. "F3@s1+I1@s6".
func (a Action) String() string {
	if f, b, ok := a.Halves(); ok {
		return f.String() + "+" + b.String()
	}
	var b strings.Builder
	b.WriteString(a.Kind.Code())
	if a.Microbatch >= 0 {
		b.WriteString(strconv.Itoa(a.Microbatch))
	}
	if a.Stage >= 0 {
		b.WriteString("@s")
		b.WriteString(strconv.Itoa(a.Stage))
	}
	return b.String()
}

// Convenience constructors.

// F is Forward(mb) on stage.
func F(mb, stage int) Action { return Action{Kind: Forward, Microbatch: mb, Stage: stage} }

// B is a full Backward(mb) on stage.
func B(mb, stage int) Action { return Action{Kind: Backward, Microbatch: mb, Stage: stage} }

// I is BackwardInput(mb) on stage.
func I(mb, stage int) Action { return Action{Kind: BackwardInput, Microbatch: mb, Stage: stage} }

// W is BackwardWeight(mb) on stage.
func W(mb, stage int) Action { return Action{Kind: BackwardWeight, Microbatch: mb, Stage: stage} }

// L is Loss(mb); the stage is the plan's head stage.
func L(mb, headStage int) Action { return Action{Kind: Loss, Microbatch: mb, Stage: headStage} }

// R is AllReduce among the replicas of stage.
func R(stage int) Action { return Action{Kind: AllReduce, Microbatch: -1, Stage: stage} }

// FB is Forward(fmb) on fstage overlapped with b, a Backward or
// BackwardInput of another microbatch.
func FB(fmb, fstage int, b Action) Action {
	return Action{Kind: Overlapped, Microbatch: fmb, Stage: fstage, Back: Half{Kind: b.Kind, Microbatch: b.Microbatch, Stage: b.Stage}}
}

// Step is OptimizerStep.
func Step() Action { return Action{Kind: OptimizerStep, Microbatch: -1, Stage: -1} }

// Layers is the total number of model layers the plan covers.
func (p *Plan) Layers() int {
	n := 0
	for _, s := range p.Stages {
		n += s.Layers
	}
	return n
}

// StageWorkers returns, for every stage, the workers holding it in replica
// order.
func (p *Plan) StageWorkers() [][]int {
	out := make([][]int, len(p.Stages))
	for w, wk := range p.Workers {
		for _, s := range wk.Stages {
			if s >= 0 && s < len(out) {
				out[s] = append(out[s], w)
			}
		}
	}
	return out
}

// Skips reports whether some microbatch path does not visit every stage in
// order.
func (p *Plan) Skips() bool {
	for _, mb := range p.Microbatches {
		if len(mb.Path) != len(p.Stages) {
			return true
		}
		for i, h := range mb.Path {
			if h.Stage != i {
				return true
			}
		}
	}
	return false
}

// TotalActions counts actions over all programs.
func (p *Plan) TotalActions() int {
	n := 0
	for _, pr := range p.Programs {
		n += len(pr)
	}
	return n
}

// AllReduceAuto, given to OverrideAllReduce, leaves every replicated
// stage's algorithm unset, for a chooser with a cost model to fill in
// (sim.ChooseAllReduce: the cheaper of ring and direct).
const AllReduceAuto = "auto"

// CheckAllReduceOverride reports whether alg is a value OverrideAllReduce
// takes.
func CheckAllReduceOverride(alg string) error {
	switch alg {
	case "", AllReduceAuto, AllReduceRing, AllReduceDirect, AllReduceOrdered:
		return nil
	}
	return fmt.Errorf("all-reduce %q: want %s, %s, %s or %s", alg, AllReduceAuto, AllReduceOrdered, AllReduceDirect, AllReduceRing)
}

// OverrideAllReduce sets the all-reduce of every stage with more than one
// replica to alg: AllReduceRing, AllReduceDirect, AllReduceOrdered, or
// AllReduceAuto (unset). The empty string keeps what the plan says (the
// classic schedules' ordered, exact reduction). It is how a user trades
// the classic schedules' exactness for speed, or asks for it elsewhere.
func OverrideAllReduce(p *Plan, alg string) error {
	if err := CheckAllReduceOverride(alg); err != nil || alg == "" {
		return err
	}
	set := alg
	if alg == AllReduceAuto {
		set = ""
	}
	for s, ws := range p.StageWorkers() {
		if len(ws) > 1 {
			p.Stages[s].AllReduce = set
		}
	}
	return nil
}
