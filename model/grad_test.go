package model

import (
	"math"
	"math/rand/v2"
	"testing"
)

// Gradient checks compare the hand-written backward passes with central
// finite differences. The model computes in float32, so the numerical
// derivative carries rounding noise of roughly ε32·|f|/h. With h = 1e-2
// (inputs and weights O(1)) that noise is ~1e-5 and the O(h²) truncation
// error ~1e-4, so we accept |analytic − numeric| ≤ 1e-3 + 2e-2·|numeric|.
// Layer objectives are random projections L = Σ wᵢ·outᵢ summed in float64,
// which exercises every output with O(1) gradients.
const (
	fdStep = 1e-2
	fdAbs  = 1e-3
	fdRel  = 2e-2
)

func randSlice(r *rand.Rand, n int, scale float64) []float32 {
	s := make([]float32, n)
	for i := range s {
		s[i] = float32(r.NormFloat64() * scale)
	}
	return s
}

func project(w, out []float32) float64 {
	var s float64
	for i := range w {
		s += float64(w[i]) * float64(out[i])
	}
	return s
}

// checkGrad perturbs every element of x (or up to limit of them) and
// compares f's central difference with analytic.
func checkGrad(t *testing.T, name string, x, analytic []float32, f func() float64) {
	t.Helper()
	worst := 0.0
	for i := range x {
		old := x[i]
		x[i] = old + fdStep
		fp := f()
		x[i] = old - fdStep
		fm := f()
		x[i] = old
		num := (fp - fm) / (2 * fdStep)
		diff := math.Abs(float64(analytic[i]) - num)
		if diff > fdAbs+fdRel*math.Abs(num) {
			t.Errorf("%s[%d]: analytic %.6g, numeric %.6g", name, i, analytic[i], num)
			return
		}
		worst = math.Max(worst, diff)
	}
	t.Logf("%s: %d elements, worst abs diff %.2g", name, len(x), worst)
}

func TestGradRMSNorm(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	n, d := 4, 8
	x, g, w := randSlice(r, n*d, 1), randSlice(r, d, 0.3), randSlice(r, n*d, 1)
	for i := range g {
		g[i]++
	}
	out, rinv := make([]float32, n*d), make([]float32, n)
	f := func() float64 { rmsnormForward(x, g, out, rinv, n, d); return project(w, out) }
	f()
	dx, dg := make([]float32, n*d), make([]float32, d)
	rmsnormBackward(x, g, rinv, w, dx, dx, dg, n, d)
	checkGrad(t, "x", x, dx, f)
	checkGrad(t, "gain", g, dg, f)
}

func TestGradGELU(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	u, w := randSlice(r, 32, 2), randSlice(r, 32, 1)
	a, th := make([]float32, 32), make([]float32, 32)
	f := func() float64 { geluForward(u, a, th, 1, len(u)); return project(w, a) }
	f()
	du := append([]float32(nil), w...)
	geluBackward(u, th, du, 1, len(u))
	checkGrad(t, "u", u, du, f)
}

func TestGradAttention(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	b, T, d, h := 2, 5, 8, 2
	qkv, w := randSlice(r, b*T*3*d, 1), randSlice(r, b*T*d, 1)
	p, out := make([]float32, b*h*T*T), make([]float32, b*T*d)
	f := func() float64 { attnForward(qkv, p, out, b, T, d, h); return project(w, out) }
	f()
	dqkv, ds := make([]float32, len(qkv)), make([]float32, T*T)
	attnBackward(qkv, p, w, dqkv, ds, b, T, d, h)
	checkGrad(t, "qkv", qkv, dqkv, f)
}

func TestGradCrossEntropy(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 8))
	n, v := 3, 7
	logits := randSlice(r, n*v, 2)
	targets := []int32{0, 6, 3}
	work := make([]float32, n*v)
	f := func() float64 { copy(work, logits); return crossEntropy(work, targets, n, v) / float64(n) }
	f()
	grad := append([]float32(nil), work...)
	checkGrad(t, "logits", logits, grad, f)
}

func tinyConfig() Config {
	// InitStd 0.3 keeps gradients well above float32 finite-difference noise.
	return Config{Layers: 2, Dim: 8, Heads: 2, Ctx: 6, Hidden: 12, Vocab: 11, Seed: 42, InitStd: 0.3}
}

// TestGradBlock checks a whole residual block (attention + MLP) through the
// Shard API: input gradient and every parameter gradient.
func TestGradBlock(t *testing.T) {
	cfg := tinyConfig()
	s, err := NewShard(cfg, ShardSpec{Lo: 1, Hi: 2})
	if err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(9, 10))
	b, T := 2, 5
	x := &Activations{Shape: []int{b, T, cfg.Dim}, Data: randSlice(r, b*T*cfg.Dim, 1)}
	w := randSlice(r, b*T*cfg.Dim, 1)
	f := func() float64 {
		out, err := s.ForwardEval(x)
		if err != nil {
			t.Fatal(err)
		}
		return project(w, out.Data)
	}
	s.ZeroGrad()
	if _, err := s.Forward(0, x); err != nil {
		t.Fatal(err)
	}
	gin, err := s.Backward(0, &Activations{Shape: []int{b, T, cfg.Dim}, Data: w})
	if err != nil {
		t.Fatal(err)
	}
	checkGrad(t, "input", x.Data, gin.Data, f)
	for _, p := range s.Params() {
		checkGrad(t, p.Name, p.W, p.G, f)
	}
}

func TestGradEmbedding(t *testing.T) {
	cfg := tinyConfig()
	s, err := NewShard(cfg, ShardSpec{Embed: true})
	if err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(11, 12))
	b, T := 2, 6
	toks := []int32{1, 2, 3, 1, 1, 10, 0, 4, 4, 4, 9, 2}
	x := TokenActivations(toks, b, T)
	w := randSlice(r, b*T*cfg.Dim, 1)
	f := func() float64 {
		out, err := s.ForwardEval(x)
		if err != nil {
			t.Fatal(err)
		}
		return project(w, out.Data)
	}
	s.ZeroGrad()
	if _, err := s.Forward(0, x); err != nil {
		t.Fatal(err)
	}
	if g, err := s.Backward(0, &Activations{Shape: []int{b, T, cfg.Dim}, Data: w}); err != nil || g != nil {
		t.Fatalf("embedding backward: %v, %v", g, err)
	}
	for _, p := range s.Params() {
		checkGrad(t, p.Name, p.W, p.G, f)
	}
}

func TestGradHead(t *testing.T) {
	cfg := tinyConfig()
	s, err := NewShard(cfg, ShardSpec{Head: true, Lo: 2, Hi: 2})
	if err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(13, 14))
	b, T := 2, 3
	h := &Activations{Shape: []int{b, T, cfg.Dim}, Data: randSlice(r, b*T*cfg.Dim, 1)}
	targets := []int32{0, 5, 10, 3, 3, 7}
	f := func() float64 {
		l, err := s.EvalLoss(h, targets)
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	s.ZeroGrad()
	_, g, err := s.Loss(0, h, targets)
	if err != nil {
		t.Fatal(err)
	}
	checkGrad(t, "hidden", h.Data, g.Data, f)
	for _, p := range s.Params() {
		checkGrad(t, p.Name, p.W, p.G, f)
	}
}

// TestGradWholeModel checks every parameter of a tiny 2-layer model
// (embedding, both blocks, final norm, head) through the full loss.
func TestGradWholeModel(t *testing.T) {
	cfg := tinyConfig()
	for _, layout := range []Layout{HeadFirst, HeadLast} {
		p, err := NewPipeline(cfg, 2, layout)
		if err != nil {
			t.Fatal(err)
		}
		b, T := 2, cfg.Ctx
		r := rand.New(rand.NewPCG(15, 16))
		win := make([]int32, b*(T+1))
		for i := range win {
			win[i] = int32(r.IntN(cfg.Vocab))
		}
		f := func() float64 {
			l, err := p.EvalLoss(win, b, T, nil)
			if err != nil {
				t.Fatal(err)
			}
			return l
		}
		for _, s := range p.Shards {
			s.ZeroGrad()
		}
		if _, err := p.TrainMicrobatch(0, win, b, T, nil); err != nil {
			t.Fatal(err)
		}
		for _, prm := range p.Params() {
			checkGrad(t, prm.Name, prm.W, prm.G, f)
		}
	}
}
