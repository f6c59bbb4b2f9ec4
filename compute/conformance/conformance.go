// Package conformance checks that a compute.Backend computes what the
// worker relies on, on a tiny model (3 blocks, dim 16, ctx 8, vocab 256):
// gradients against central finite differences of the loss, the gradient
// operations against each other, kept contributions against the
// accumulated gradient, state round trips and determinism to the bit,
// skip semantics, and refusal of wrong shapes without harm. Any backend's
// tests call Run: the built-in one in process, any other through
// compute/remote (Command starts it as a process).
package conformance

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"stagecoach/compute"
	"stagecoach/compute/remote"
)

// Options adjust Run.
type Options struct {
	// Optim is the optimizer configuration as JSON (default: AdamW at
	// lr 1e-2 with the model's defaults otherwise).
	Optim []byte
	// GradTolerance is the relative tolerance of the finite-difference
	// checks (default 5e-2; see epsParam for what it is relative to).
	GradTolerance float64
	// Command, when newBackend is nil, is the backend to test: a command
	// line started (once per backend the suite needs) by remote.Start
	// with Env (nil: this process's) and Remote's options.
	Command []string
	Env     []string
	Remote  remote.Options
}

// The test model and microbatch shape.
const (
	Layers = 3
	Dim    = 16
	Heads  = 2
	Ctx    = 8
	Vocab  = 256
	Seed   = 7
	// B and T are the microbatch shape: 2 sequences of the whole context.
	B = 2
	T = Ctx
)

// ModelJSON is the test model's configuration with seed.
func ModelJSON(seed uint64) []byte {
	b, _ := json.Marshal(map[string]any{"layers": Layers, "dim": Dim, "heads": Heads, "ctx": Ctx, "vocab": Vocab, "seed": seed})
	return b
}

// DefaultOptim is the default optimizer configuration.
var DefaultOptim = []byte(`{"kind":"adamw","lr":0.01,"total_steps":10}`)

// Command is a newBackend for Run that starts args as a backend process
// through compute/remote (closed when the test ends).
func Command(args []string, env []string, opts remote.Options) func(t *testing.T) compute.Backend {
	return func(t *testing.T) compute.Backend {
		t.Helper()
		b, err := remote.Start(context.Background(), remote.Command{Args: args, Env: env}, opts)
		if err != nil {
			t.Fatalf("start backend: %v", err)
		}
		t.Cleanup(func() { _ = b.Close() })
		return b
	}
}

// suite is one run's backend maker and options.
type suite struct {
	newBackend func(t *testing.T) compute.Backend
	opts       Options
}

// Run checks the backends newBackend makes (one per subtest that needs
// one, two where two must agree); newBackend should close what it makes
// when the test ends. With newBackend nil, opts.Command is started.
func Run(t *testing.T, newBackend func(t *testing.T) compute.Backend, opts Options) {
	if newBackend == nil {
		if len(opts.Command) == 0 {
			t.Fatal("conformance: neither a backend nor a command to test")
		}
		newBackend = Command(opts.Command, opts.Env, opts.Remote)
	}
	if opts.Optim == nil {
		opts.Optim = DefaultOptim
	}
	if opts.GradTolerance == 0 {
		opts.GradTolerance = 5e-2
	}
	s := &suite{newBackend: newBackend, opts: opts}
	t.Run("Describe", s.testDescribe)
	t.Run("Gradients", s.testGradients)
	t.Run("GradientOps", s.testGradientOps)
	t.Run("Contributions", s.testContributions)
	t.Run("State", s.testState)
	t.Run("Step", s.testStep)
	t.Run("Skip", s.testSkip)
	t.Run("Refusals", s.testRefusals)
}

// The stage kinds every check covers.
var (
	embedOnly  = compute.ShardSpec{Lo: 0, Hi: 0, Embed: true}
	blocksOnly = compute.ShardSpec{Lo: 1, Hi: 2}
	headOnly   = compute.ShardSpec{Lo: Layers, Hi: Layers, Head: true}
	whole      = compute.ShardSpec{Lo: 0, Hi: Layers, Embed: true, Head: true}
)

func kindName(sp compute.ShardSpec) string {
	s := fmt.Sprintf("blocks[%d,%d)", sp.Lo, sp.Hi)
	if sp.Embed {
		s = "embed+" + s
	}
	if sp.Head {
		s += "+head"
	}
	return s
}

func (s *suite) load(t *testing.T, b compute.Backend, sp compute.ShardSpec, seed uint64) compute.Stage {
	t.Helper()
	st, err := b.Load(context.Background(), compute.LoadSpec{Model: ModelJSON(seed), Optim: s.opts.Optim, Shard: sp})
	if err != nil {
		t.Fatalf("load %s: %v", kindName(sp), err)
	}
	t.Cleanup(func() { _ = st.Close() })
	return st
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// batch is one microbatch's data: token ids, targets, a hidden state and
// a gradient of the hidden state (for stages without the embedding or
// the head).
type batch struct {
	tokens  *compute.Tensor
	targets []int32
	hidden  *compute.Tensor
	probe   *compute.Tensor
}

func newBatch(seed uint64) batch {
	rng := rand.New(rand.NewPCG(seed, 99))
	var b batch
	b.tokens = &compute.Tensor{Shape: []int{B, T}, Data: make([]float32, B*T)}
	for i := range b.tokens.Data {
		b.tokens.Data[i] = float32(rng.IntN(Vocab))
	}
	b.targets = make([]int32, B*T)
	for i := range b.targets {
		b.targets[i] = int32(rng.IntN(Vocab))
	}
	b.hidden = randTensor(rng, 1)
	b.probe = randTensor(rng, 1)
	return b
}

func randTensor(rng *rand.Rand, std float64) *compute.Tensor {
	t := &compute.Tensor{Shape: []int{B, T, Dim}, Data: make([]float32, B*T*Dim)}
	for i := range t.Data {
		t.Data[i] = float32(rng.NormFloat64() * std)
	}
	return t
}

// input is what the stage takes for microbatch data b.
func input(sp compute.ShardSpec, b batch) *compute.Tensor {
	if sp.Embed {
		return b.tokens
	}
	return b.hidden
}

// objective runs microbatch mb of b through st and returns the scalar the
// gradient checks differentiate: the loss on a head stage; otherwise
// sum(probe ⊙ output), whose gradient of the output is the probe. With
// backward it then runs the backward pass and returns the input gradient.
func objective(st compute.Stage, sp compute.ShardSpec, mb int, b batch, x *compute.Tensor, backward bool) (float64, *compute.Tensor, error) {
	y, err := st.Forward(mb, x)
	if err != nil {
		return 0, nil, err
	}
	var L float64
	g := b.probe
	if sp.Head {
		if L, g, err = st.Loss(mb, y, b.targets); err != nil {
			return 0, nil, err
		}
	} else {
		for i, v := range y.Data {
			L += float64(v) * float64(b.probe.Data[i])
		}
	}
	if !backward {
		return L, nil, nil
	}
	gx, err := st.Backward(mb, g)
	return L, gx, err
}

// cloneStates copies states out of the stage's buffers.
func cloneStates(in []compute.ParamState) []compute.ParamState {
	out := make([]compute.ParamState, len(in))
	for i, s := range in {
		out[i] = s
		out[i].Shape = slices.Clone(s.Shape)
		out[i].W, out[i].M, out[i].V = slices.Clone(s.W), slices.Clone(s.M), slices.Clone(s.V)
	}
	return out
}

func state(t *testing.T, st compute.Stage) []compute.ParamState {
	t.Helper()
	s, err := st.State()
	must(t, err)
	return cloneStates(s)
}

func sameBits(a, b []float32) int {
	if len(a) != len(b) {
		return 0
	}
	for i := range a {
		if math.Float32bits(a[i]) != math.Float32bits(b[i]) {
			return i
		}
	}
	return -1
}

// RequireBits fails the test unless a and b are the same floats bit for
// bit, naming what and the first element that differs.
func RequireBits(t *testing.T, what string, a, b []float32) {
	t.Helper()
	if len(a) != len(b) {
		t.Fatalf("%s: %d elements vs %d", what, len(a), len(b))
	}
	if i := sameBits(a, b); i >= 0 {
		t.Fatalf("%s: element %d differs: %v vs %v", what, i, a[i], b[i])
	}
}

func requireStates(t *testing.T, what string, a, b []compute.ParamState) {
	t.Helper()
	if len(a) != len(b) {
		t.Fatalf("%s: %d tensors vs %d", what, len(a), len(b))
	}
	for i := range a {
		if a[i].Name != b[i].Name || !slices.Equal(a[i].Shape, b[i].Shape) {
			t.Fatalf("%s: tensor %d is %s %v vs %s %v", what, i, a[i].Name, a[i].Shape, b[i].Name, b[i].Shape)
		}
		RequireBits(t, what+": "+a[i].Name, a[i].W, b[i].W)
		RequireBits(t, what+": "+a[i].Name+" first moment", a[i].M, b[i].M)
		RequireBits(t, what+": "+a[i].Name+" second moment", a[i].V, b[i].V)
	}
}

// refused fails unless err is a refusal: an error, and not one of the
// backend failing.
func refused(t *testing.T, what string, err error) {
	t.Helper()
	if err == nil {
		t.Fatalf("%s: accepted, want an error", what)
	}
	if errors.Is(err, compute.ErrBackend) {
		t.Fatalf("%s: %v: a refusal must not be a backend failure", what, err)
	}
}

func (s *suite) testDescribe(t *testing.T) {
	b := s.newBackend(t)
	n := map[string]int{}
	for _, sp := range []compute.ShardSpec{embedOnly, blocksOnly, headOnly, whole} {
		st := s.load(t, b, sp, Seed)
		d := st.Describe()
		if d.Width != Dim {
			t.Errorf("%s: width %d, want %d", kindName(sp), d.Width, Dim)
		}
		if d.Backend == "" {
			t.Errorf("%s: no backend name", kindName(sp))
		}
		names := []string{}
		for _, p := range d.Params {
			names = append(names, p.Name)
		}
		n[kindName(sp)] = len(names)
		want := paramNames(sp)
		if !slices.Equal(names, want) {
			t.Errorf("%s: parameters %v, want %v", kindName(sp), names, want)
		}
		for i := 1; i < len(d.Params); i++ {
			if d.Params[i].Index <= d.Params[i-1].Index {
				t.Errorf("%s: parameter %s has index %d after %d: the order must be canonical", kindName(sp), d.Params[i].Name, d.Params[i].Index, d.Params[i-1].Index)
			}
		}
	}
}

// paramNames are the parameters of a shard, in canonical order.
func paramNames(sp compute.ShardSpec) []string {
	var out []string
	if sp.Embed {
		out = append(out, "tok_emb", "pos_emb")
	}
	for l := sp.Lo; l < sp.Hi; l++ {
		for _, n := range []string{"norm1", "wqkv", "wo", "norm2", "w1", "w2"} {
			out = append(out, fmt.Sprintf("blocks.%d.%s", l, n))
		}
	}
	if sp.Head {
		out = append(out, "norm_f", "head")
	}
	return out
}
