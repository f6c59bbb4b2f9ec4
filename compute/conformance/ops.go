package conformance

import (
	"math"
	"slices"
	"testing"

	"stagecoach/compute"
)

// trainStep runs one step's gradient work on st for microbatches mbs (in
// ascending order): ZeroGrad, every Forward, then Loss (on a head stage)
// and Backward per microbatch. It returns the losses (head stage) or the
// input gradients' first elements (others), for comparison.
func trainStep(t *testing.T, st compute.Stage, sp compute.ShardSpec, mbs []int) []float64 {
	t.Helper()
	must(t, st.ZeroGrad())
	ys := map[int]*compute.Tensor{}
	for _, mb := range mbs {
		y, err := st.Forward(mb, input(sp, newBatch(uint64(100+mb))))
		must(t, err)
		ys[mb] = y
	}
	var out []float64
	for _, mb := range mbs {
		data := newBatch(uint64(100 + mb))
		g := data.probe
		if sp.Head {
			L, gh, err := st.Loss(mb, ys[mb], data.targets)
			must(t, err)
			out = append(out, L)
			g = gh
		}
		gx, err := st.Backward(mb, g)
		must(t, err)
		if gx != nil {
			out = append(out, float64(gx.Data[0]))
		}
	}
	return out
}

func (s *suite) testGradientOps(t *testing.T) {
	b := s.newBackend(t)
	for _, sp := range []compute.ShardSpec{blocksOnly, whole} {
		t.Run(kindName(sp), func(t *testing.T) {
			st := s.load(t, b, sp, Seed)
			d := st.Describe()
			trainStep(t, st, sp, []int{0, 1})
			g, err := st.Grads()
			must(t, err)
			if len(g) != d.GradElems() {
				t.Fatalf("Grads has %d elements, Describe says %d", len(g), d.GradElems())
			}
			checkSumSquares(t, st, d, g)
			if maxAbs(g) == 0 {
				t.Fatal("all gradients are zero after a backward pass")
			}

			// SetGrads replaces, Grads returns it, to the bit.
			g2 := make([]float32, len(g))
			for i, v := range g {
				g2[i] = -0.5*v + float32(i%7)*1e-3
			}
			must(t, st.SetGrads(g2))
			got, err := st.Grads()
			must(t, err)
			RequireBits(t, "Grads after SetGrads", got, g2)
			checkSumSquares(t, st, d, g2)

			// ScaleGrads multiplies each element as float32.
			must(t, st.ScaleGrads(0.375))
			for i := range g2 {
				g2[i] *= 0.375
			}
			got, err = st.Grads()
			must(t, err)
			RequireBits(t, "Grads after ScaleGrads", got, g2)
			checkSumSquares(t, st, d, g2)

			// A wrong length is refused and changes nothing.
			refused(t, "SetGrads with one element too few", st.SetGrads(g2[1:]))
			got, err = st.Grads()
			must(t, err)
			RequireBits(t, "Grads after a refused SetGrads", got, g2)

			// ZeroGrad zeroes.
			must(t, st.ZeroGrad())
			got, err = st.Grads()
			must(t, err)
			RequireBits(t, "Grads after ZeroGrad", got, make([]float32, len(g)))
		})
	}
}

// checkSumSquares compares SumSquares with g, the stage's gradient: per
// parameter the float64 sum of squares of its elements. The contract sums
// in element order; 1e-12 relative leaves room for a backend that sums
// pairwise, and none for a wrong sum.
func checkSumSquares(t *testing.T, st compute.Stage, d compute.Description, g []float32) {
	t.Helper()
	ss, err := st.SumSquares()
	must(t, err)
	if len(ss) != len(d.Params) {
		t.Fatalf("SumSquares gave %d sums, the stage has %d parameters", len(ss), len(d.Params))
	}
	off := 0
	for i, p := range d.Params {
		var want float64
		for _, v := range g[off : off+p.Elems()] {
			want += float64(v) * float64(v)
		}
		off += p.Elems()
		if math.Abs(ss[i]-want) > 1e-12*want {
			t.Fatalf("SumSquares of %s is %.17g, its gradient's squares sum to %.17g", p.Name, ss[i], want)
		}
	}
}

func (s *suite) testContributions(t *testing.T) {
	b := s.newBackend(t)
	for _, sp := range []compute.ShardSpec{embedOnly, blocksOnly, whole} {
		t.Run(kindName(sp), func(t *testing.T) {
			kept := s.load(t, b, sp, Seed)
			summed := s.load(t, b, sp, Seed)
			must(t, kept.KeepContributions(true))
			mbs := []int{0, 1, 2}
			for step := 0; step < 2; step++ {
				// The second step checks that the kept buffers
				// start from zero again.
				a := trainStep(t, kept, sp, mbs)
				c := trainStep(t, summed, sp, mbs)
				if !slices.Equal(a, c) {
					t.Fatalf("step %d: keeping contributions changed the results: %v vs %v", step, a, c)
				}
				n := kept.Describe().GradElems()
				sum := make([]float32, n)
				for _, mb := range mbs {
					ci, err := kept.Contribution(mb)
					must(t, err)
					if len(ci) != n {
						t.Fatalf("contribution of microbatch %d has %d elements, the gradient %d", mb, len(ci), n)
					}
					for i, v := range ci {
						sum[i] += v
					}
				}
				want, err := summed.Grads()
				must(t, err)
				RequireBits(t, "contributions summed in microbatch order vs the accumulated gradient", sum, want)
				got, err := kept.Grads()
				must(t, err)
				RequireBits(t, "the gradient while contributions are kept apart", got, make([]float32, n))
				_, err = kept.Contribution(7)
				refused(t, "Contribution of a microbatch that did not run", err)
			}
			// Off again: the gradient accumulates as before.
			must(t, kept.KeepContributions(false))
			trainStep(t, kept, sp, mbs)
			trainStep(t, summed, sp, mbs)
			got, err := kept.Grads()
			must(t, err)
			want, err := summed.Grads()
			must(t, err)
			RequireBits(t, "the gradient after contributions are no longer kept", got, want)
		})
	}
}

func (s *suite) testState(t *testing.T) {
	b := s.newBackend(t)
	for _, sp := range []compute.ShardSpec{embedOnly, blocksOnly, whole} {
		t.Run(kindName(sp), func(t *testing.T) {
			a := s.load(t, b, sp, Seed)
			trainStep(t, a, sp, []int{0, 1})
			must(t, a.ScaleGrads(0.5))
			must(t, a.Step(1, 1e-2, 1))
			sa := state(t, a)
			for _, p := range sa {
				if len(p.M) != len(p.W) || len(p.V) != len(p.W) {
					t.Fatalf("%s: %d weights with %d and %d moment elements; AdamW keeps both moments", p.Name, len(p.W), len(p.M), len(p.V))
				}
			}
			// Another seed: every weight differs until SetState.
			c := s.load(t, b, sp, Seed+1)
			if sc := state(t, c); sameBits(sc[0].W, sa[0].W) < 0 {
				t.Fatalf("stages of seeds %d and %d start with the same %s", Seed, Seed+1, sc[0].Name)
			}
			must(t, c.SetState(sa))
			requireStates(t, "state after SetState", state(t, c), sa)

			// Same state, same numbers: forward, and the next step.
			must(t, a.ZeroGrad())
			must(t, c.ZeroGrad())
			x := input(sp, newBatch(42))
			ya, err := a.Forward(5, x)
			must(t, err)
			yc, err := c.Forward(5, x)
			must(t, err)
			RequireBits(t, "forward after SetState", yc.Data, ya.Data)
			for _, st := range []compute.Stage{a, c} {
				trainStep(t, st, sp, []int{0, 1})
				must(t, st.Step(2, 1e-2, 1))
			}
			requireStates(t, "state a step after SetState", state(t, c), state(t, a))

			// A state of other names or shapes is refused.
			bad := cloneStates(sa)
			bad[0].Name += ".x"
			refused(t, "SetState with a wrong name", c.SetState(bad))
			refused(t, "SetState without the last tensor", c.SetState(sa[:len(sa)-1]))
		})
	}
}

func (s *suite) testStep(t *testing.T) {
	one, two := s.newBackend(t), s.newBackend(t)
	a := s.load(t, one, whole, Seed)
	c := s.load(t, two, whole, Seed)
	initial := state(t, a)
	mbs := []int{0, 1, 2}
	for step := 1; step <= 3; step++ {
		var sums [2][]float64
		for i, st := range []compute.Stage{a, c} {
			la := trainStep(t, st, whole, mbs)
			if step == 1 && i == 0 {
				t.Logf("step 1 losses %v", la)
			}
			must(t, st.ScaleGrads(1/float32(len(mbs))))
			ss, err := st.SumSquares()
			must(t, err)
			sums[i] = ss
			var total float64
			for _, v := range ss {
				total += v
			}
			clip := float32(1)
			if n := math.Sqrt(total); n > 0.5 {
				clip = float32(0.5 / n)
			}
			must(t, st.Step(step, 1e-2, clip))
		}
		if !slices.Equal(sums[0], sums[1]) {
			t.Fatalf("step %d: two backends' sums of squares differ: %v vs %v", step, sums[0], sums[1])
		}
		requireStates(t, "two backends stepped alike", state(t, c), state(t, a))
	}
	after := state(t, a)
	for i := range initial {
		if sameBits(initial[i].W, after[i].W) < 0 {
			t.Errorf("%s is unchanged after three steps", initial[i].Name)
		}
	}
}

// testSkip checks what skipping a stage means: not calling it. Stages
// embed+block 0, block 1 and block 2+head; microbatch 1 goes from the
// first straight to the last. Then (1) the middle stage's gradient holds
// only microbatch 0's contribution, bit for bit, and is zero in a step
// that only microbatch 1 runs; (2) the skipping path computes what the
// whole model computes when block 1 is the identity (its output
// projections wo and w2 zero, so both residual branches add exact
// zeros): the same loss to the bit, and the same gradients of the
// other blocks' parameters.
func (s *suite) testSkip(t *testing.T) {
	b := s.newBackend(t)
	sp0 := compute.ShardSpec{Lo: 0, Hi: 1, Embed: true}
	sp1 := compute.ShardSpec{Lo: 1, Hi: 2}
	sp2 := compute.ShardSpec{Lo: 2, Hi: Layers, Head: true}
	s0, s1, s2 := s.load(t, b, sp0, Seed), s.load(t, b, sp1, Seed), s.load(t, b, sp2, Seed)
	only := s.load(t, b, sp1, Seed)

	d0, d1 := newBatch(1), newBatch(2)
	for _, st := range []compute.Stage{s0, s1, s2, only} {
		must(t, st.ZeroGrad())
	}
	h0, err := s0.Forward(0, d0.tokens)
	must(t, err)
	h1, err := s0.Forward(1, d1.tokens)
	must(t, err)
	m0, err := s1.Forward(0, h0)
	must(t, err)
	if _, err := only.Forward(0, h0); err != nil {
		t.Fatal(err)
	}
	y0, err := s2.Forward(0, m0)
	must(t, err)
	y1, err := s2.Forward(1, h1) // skips s1
	must(t, err)
	_, g0, err := s2.Loss(0, y0, d0.targets)
	must(t, err)
	gm0, err := s2.Backward(0, g0)
	must(t, err)
	gh0, err := s1.Backward(0, gm0)
	must(t, err)
	if _, err := only.Backward(0, gm0); err != nil {
		t.Fatal(err)
	}
	_, err = s0.Backward(0, gh0)
	must(t, err)
	skipLoss, g1, err := s2.Loss(1, y1, d1.targets)
	must(t, err)
	gh1, err := s2.Backward(1, g1)
	must(t, err)
	_, err = s0.Backward(1, gh1)
	must(t, err)

	got, err := s1.Grads()
	must(t, err)
	want, err := only.Grads()
	must(t, err)
	RequireBits(t, "the skipped stage's gradient vs microbatch 0's alone", got, want)

	// A step only the skipping microbatch runs.
	for _, st := range []compute.Stage{s0, s1, s2} {
		must(t, st.ZeroGrad())
	}
	h1, err = s0.Forward(1, d1.tokens)
	must(t, err)
	y1, err = s2.Forward(1, h1)
	must(t, err)
	L, g1, err := s2.Loss(1, y1, d1.targets)
	must(t, err)
	if math.Float64bits(L) != math.Float64bits(skipLoss) {
		t.Fatalf("microbatch 1's loss changed between steps: %v vs %v", L, skipLoss)
	}
	gh1, err = s2.Backward(1, g1)
	must(t, err)
	_, err = s0.Backward(1, gh1)
	must(t, err)
	got, err = s1.Grads()
	must(t, err)
	RequireBits(t, "the gradient of a stage no microbatch visited", got, make([]float32, len(got)))

	// The whole model with block 1 the identity.
	w := s.load(t, b, whole, Seed)
	ws := state(t, w)
	for i := range ws {
		if ws[i].Name == "blocks.1.wo" || ws[i].Name == "blocks.1.w2" {
			clear(ws[i].W)
		}
	}
	must(t, w.SetState(ws))
	must(t, w.ZeroGrad())
	yw, err := w.Forward(1, d1.tokens)
	must(t, err)
	RequireBits(t, "the whole model with an identity block 1 vs the path skipping it", yw.Data, y1.Data)
	wl, gw, err := w.Loss(1, yw, d1.targets)
	must(t, err)
	if math.Float64bits(wl) != math.Float64bits(L) {
		t.Fatalf("loss: whole model with an identity block 1 %v, the path skipping it %v", wl, L)
	}
	_, err = w.Backward(1, gw)
	must(t, err)
	wg := gradsByName(t, w)
	for _, st := range []compute.Stage{s0, s2} {
		for name, g := range gradsByName(t, st) {
			ref := wg[name]
			scale := maxAbs(ref)
			for i := range g {
				if math.Abs(float64(g[i]-ref[i])) > 1e-5*scale {
					t.Fatalf("%s[%d]: gradient %v skipping block 1, %v through an identity block 1", name, i, g[i], ref[i])
				}
			}
		}
	}
}

// gradsByName splits a stage's gradient by parameter.
func gradsByName(t *testing.T, st compute.Stage) map[string][]float32 {
	t.Helper()
	g, err := st.Grads()
	must(t, err)
	out := map[string][]float32{}
	off := 0
	for _, p := range st.Describe().Params {
		out[p.Name] = g[off : off+p.Elems()]
		off += p.Elems()
	}
	return out
}

// testRefusals sends what a stage must refuse, each refused with an error
// that is not a backend failure, and then checks that the stage computes
// exactly what a fresh one does.
func (s *suite) testRefusals(t *testing.T) {
	b := s.newBackend(t)
	blocks := s.load(t, b, blocksOnly, Seed)
	head := s.load(t, b, headOnly, Seed)
	embed := s.load(t, b, embedOnly, Seed)
	data := newBatch(9)
	hidden := func(shape ...int) *compute.Tensor {
		n := 1
		for _, d := range shape {
			n *= d
		}
		return &compute.Tensor{Shape: shape, Data: make([]float32, n)}
	}
	must(t, blocks.ZeroGrad())
	_, err := blocks.Forward(0, hidden(B, T))
	refused(t, "a rank-2 hidden state", err)
	_, err = blocks.Forward(0, hidden(B, T, Dim+1))
	refused(t, "a hidden state of the wrong width", err)
	_, err = blocks.Forward(0, hidden(B, Ctx+1, Dim))
	refused(t, "a hidden state longer than the context", err)
	_, err = blocks.Forward(0, &compute.Tensor{Shape: []int{B, T, Dim}, Data: make([]float32, 5)})
	refused(t, "data that does not fill its shape", err)
	_, err = blocks.Backward(3, data.probe)
	refused(t, "Backward of a microbatch without a forward", err)
	_, err = blocks.Forward(0, data.hidden)
	must(t, err)
	_, err = blocks.Forward(0, data.hidden)
	refused(t, "a second Forward of a pending microbatch", err)
	_, err = blocks.Backward(0, hidden(B+1, T, Dim))
	refused(t, "Backward with another batch size", err)
	_, err = blocks.Backward(0, hidden(B, T, Dim-1))
	refused(t, "Backward of the wrong width", err)
	_, _, err = blocks.Loss(0, data.hidden, data.targets)
	refused(t, "Loss on a stage without the head", err)
	_, _, err = head.Loss(0, data.hidden, data.targets[1:])
	refused(t, "targets of the wrong length", err)
	bad := slices.Clone(data.targets)
	bad[3] = Vocab
	_, _, err = head.Loss(0, data.hidden, bad)
	refused(t, "a target outside the vocabulary", err)
	toks := &compute.Tensor{Shape: []int{B, T}, Data: slices.Clone(data.tokens.Data)}
	toks.Data[2] = Vocab
	_, err = embed.Forward(0, toks)
	refused(t, "a token outside the vocabulary", err)
	toks.Data[2] = 0.5
	_, err = embed.Forward(0, toks)
	refused(t, "a token that is not an integer", err)
	_, err = embed.Forward(0, data.hidden)
	refused(t, "a hidden state where token ids belong", err)

	// Still exact: the pending microbatch's backward, then a whole step,
	// against a fresh stage.
	fresh := s.load(t, b, blocksOnly, Seed)
	must(t, fresh.ZeroGrad())
	_, err = fresh.Forward(0, data.hidden)
	must(t, err)
	g1, err := blocks.Backward(0, data.probe)
	must(t, err)
	g2, err := fresh.Backward(0, data.probe)
	must(t, err)
	RequireBits(t, "input gradient after refusals vs a fresh stage", g1.Data, g2.Data)
	a := trainStep(t, blocks, blocksOnly, []int{0, 1})
	c := trainStep(t, fresh, blocksOnly, []int{0, 1})
	if !slices.Equal(a, c) {
		t.Fatalf("after refusals: %v, a fresh stage: %v", a, c)
	}
	ga, err := blocks.Grads()
	must(t, err)
	gc, err := fresh.Grads()
	must(t, err)
	RequireBits(t, "gradient after refusals vs a fresh stage", ga, gc)
	L1, _, err := objective(head, headOnly, 0, data, data.hidden, true)
	must(t, err)
	freshHead := s.load(t, b, headOnly, Seed)
	L2, _, err := objective(freshHead, headOnly, 0, data, data.hidden, true)
	must(t, err)
	if math.Float64bits(L1) != math.Float64bits(L2) {
		t.Fatalf("head loss after refusals %v, a fresh stage's %v", L1, L2)
	}
}
