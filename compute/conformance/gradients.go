package conformance

import (
	"math"
	"math/rand/v2"
	"sort"
	"testing"

	"stagecoach/compute"
)

// Finite differences in float32. The objective is a float64 sum of
// float32 results, with rounding noise near 1e-7 of its size, so a step
// must be large for the noise not to swamp a gradient element: epsParam
// times the tensor's root mean square (parameters are about 0.02, norm
// gains 1), epsInput for hidden states (about 1), and epsDir times each
// tensor's scale along a random direction of all parameters at once
// (smaller, since every element moves). Measured on the built-in model:
// element errors up to 1.5%, directional ones 0.2%, and a wrong gradient
// is off by far more than the default tolerance of 5%. Errors are
// relative to the element's gradient or, when larger, gradFloor times
// the largest gradient of its tensor; only elements above that floor are
// sampled, so noise does not decide.
const (
	epsParam  = 0.2
	epsInput  = 1e-2
	epsDir    = 0.02
	gradFloor = 0.05
	// samplesPerTensor elements per tensor are checked: its largest
	// gradient and random ones among those above the floor.
	samplesPerTensor = 3
)

func (s *suite) testGradients(t *testing.T) {
	b := s.newBackend(t)
	for _, sp := range []compute.ShardSpec{embedOnly, blocksOnly, headOnly, whole} {
		t.Run(kindName(sp), func(t *testing.T) { s.checkGradients(t, b, sp) })
	}
}

// checkGradients compares the stage's parameter and input gradients with
// central differences of the objective (see objective): a sample of
// elements of every tensor, and the derivative along a random direction
// of all of them at once.
func (s *suite) checkGradients(t *testing.T, b compute.Backend, sp compute.ShardSpec) {
	st := s.load(t, b, sp, Seed)
	data := newBatch(11)
	x := input(sp, data)
	must(t, st.ZeroGrad())
	_, gx, err := objective(st, sp, 0, data, x, true)
	must(t, err)
	if sp.Embed != (gx == nil) {
		t.Fatalf("backward returned input gradient %v; the embedding stage has none, the others one", gx != nil)
	}
	g, err := st.Grads()
	must(t, err)
	base := state(t, st)
	eval := func(states []compute.ParamState, x *compute.Tensor) float64 {
		t.Helper()
		must(t, st.SetState(states))
		must(t, st.ZeroGrad())
		L, _, err := objective(st, sp, 0, data, x, false)
		must(t, err)
		return L
	}
	rng := rand.New(rand.NewPCG(3, 5))
	tol := s.opts.GradTolerance

	// Parameters, element by element.
	off := 0
	for pi, p := range base {
		n := len(p.W)
		gp := g[off : off+n]
		eps := epsParam * rms(p.W)
		for _, j := range sample(rng, gp) {
			orig := p.W[j]
			base[pi].W[j] = orig + eps
			lp := eval(base, x)
			base[pi].W[j] = orig - eps
			lm := eval(base, x)
			base[pi].W[j] = orig
			// The step as float32 actually took it.
			fd := (lp - lm) / (float64(orig+eps) - float64(orig-eps))
			check(t, p.Name, j, float64(gp[j]), fd, maxAbs(gp), tol)
		}
		off += n
	}
	if off != len(g) {
		t.Fatalf("Grads has %d elements, the state's tensors %d", len(g), off)
	}

	// Parameters, along a random direction.
	dir := make([][]float32, len(base))
	var want float64
	off = 0
	for i, p := range base {
		dir[i] = make([]float32, len(p.W))
		r := rms(p.W)
		for j := range dir[i] {
			dir[i][j] = float32(rng.NormFloat64()) * r
			want += float64(g[off+j]) * float64(dir[i][j])
		}
		off += len(p.W)
	}
	shift := func(k float32) []compute.ParamState {
		out := cloneStates(base)
		for i := range out {
			for j := range out[i].W {
				out[i].W[j] += k * dir[i][j]
			}
		}
		return out
	}
	fd := (eval(shift(epsDir), x) - eval(shift(-epsDir), x)) / (2 * float64(epsDir))
	if math.Abs(fd-want) > tol*math.Abs(want) {
		t.Errorf("parameters along a random direction: gradient gives %.6g, finite differences %.6g", want, fd)
	}
	must(t, st.SetState(base))
	if gx == nil {
		return
	}

	// The input gradient.
	if len(gx.Data) != len(x.Data) {
		t.Fatalf("input gradient has %d elements, the input %d", len(gx.Data), len(x.Data))
	}
	xs := &compute.Tensor{Shape: x.Shape, Data: append([]float32(nil), x.Data...)}
	for _, j := range sample(rng, gx.Data) {
		orig := xs.Data[j]
		xs.Data[j] = orig + epsInput
		lp := eval(base, xs)
		xs.Data[j] = orig - epsInput
		lm := eval(base, xs)
		xs.Data[j] = orig
		fd := (lp - lm) / (float64(orig+epsInput) - float64(orig-epsInput))
		check(t, "input", j, float64(gx.Data[j]), fd, maxAbs(gx.Data), tol)
	}
	want = 0
	xp := &compute.Tensor{Shape: x.Shape, Data: make([]float32, len(x.Data))}
	xm := &compute.Tensor{Shape: x.Shape, Data: make([]float32, len(x.Data))}
	for j := range x.Data {
		d := float32(rng.NormFloat64())
		want += float64(gx.Data[j]) * float64(d)
		xp.Data[j] = x.Data[j] + epsInput*d
		xm.Data[j] = x.Data[j] - epsInput*d
	}
	fd = (eval(base, xp) - eval(base, xm)) / (2 * float64(epsInput))
	if math.Abs(fd-want) > tol*math.Abs(want) {
		t.Errorf("input along a random direction: gradient gives %.6g, finite differences %.6g", want, fd)
	}
}

// check compares one gradient element with its finite difference.
func check(t *testing.T, tensor string, j int, got, fd, scale, tol float64) {
	t.Helper()
	ref := math.Max(math.Abs(got), gradFloor*scale)
	if math.Abs(got-fd) > tol*ref || math.IsNaN(got) {
		t.Errorf("%s[%d]: gradient %.6g, finite differences %.6g (relative error %.3g, tolerance %.3g)", tensor, j, got, fd, math.Abs(got-fd)/ref, tol)
	}
}

// rms is the root mean square of w, at least 1e-3: the scale of a
// tensor's elements, to which its finite-difference step is relative.
func rms(w []float32) float32 {
	var s float64
	for _, v := range w {
		s += float64(v) * float64(v)
	}
	return float32(math.Max(math.Sqrt(s/float64(max(len(w), 1))), 1e-3))
}

func maxAbs(v []float32) float64 {
	m := 0.0
	for _, x := range v {
		m = math.Max(m, math.Abs(float64(x)))
	}
	return m
}

// sample picks the index of g's largest element and up to
// samplesPerTensor-1 random ones above the floor. An all-zero g (a
// tensor with no gradient) gets its first element, which the finite
// difference must then find zero too.
func sample(rng *rand.Rand, g []float32) []int {
	if len(g) == 0 {
		return nil
	}
	m := maxAbs(g)
	top := 0
	var above []int
	for i, v := range g {
		a := math.Abs(float64(v))
		if a > math.Abs(float64(g[top])) {
			top = i
		}
		if a >= gradFloor*m && a > 0 {
			above = append(above, i)
		}
	}
	out := []int{top}
	rng.Shuffle(len(above), func(i, j int) { above[i], above[j] = above[j], above[i] })
	for _, i := range above {
		if len(out) == samplesPerTensor {
			break
		}
		if i != top {
			out = append(out, i)
		}
	}
	sort.Ints(out)
	return out
}
