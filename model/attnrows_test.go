package model

import (
	"math"
	"math/rand/v2"
	"testing"

	"stagecoach/internal/vecf32"
)

// softmaxRowsOneByOne is causal softmax as the model computed it before
// causalSoftmax took the row's max in vector lanes: the bits it must keep.
func softmaxRowsOneByOne(m []float32, t int, scale float32) {
	for i := 0; i < t; i++ {
		row := m[i*t : (i+1)*t]
		vecf32.Scale(row[:i+1], scale)
		mx := float32(math.Inf(-1))
		for _, x := range row[:i+1] {
			if x > mx {
				mx = x
			}
		}
		vecf32.ExpSub(row[:i+1], mx)
		var sum float32
		for _, e := range row[:i+1] {
			sum += e
		}
		vecf32.Scale(row[:i+1], 1/sum)
		clear(row[i+1:])
	}
}

func softmaxGradRowsOneByOne(p, d []float32, t int, scale float32) {
	for i := 0; i < t; i++ {
		pr, dr := p[i*t:(i+1)*t], d[i*t:(i+1)*t]
		var dot float32
		for j := 0; j <= i; j++ {
			dot += pr[j] * dr[j]
		}
		vecf32.SoftmaxGrad(pr[:i+1], dr[:i+1], dot, scale)
		clear(dr[i+1:])
	}
}

func sameBits(t *testing.T, what string, got, want []float32) {
	t.Helper()
	for i := range want {
		if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
			t.Fatalf("%s: element %d is %g (bits %#x), the scalar max gives %g (bits %#x)",
				what, i, got[i], math.Float32bits(got[i]), want[i], math.Float32bits(want[i]))
		}
	}
}

// TestCausalSoftmaxKeepsItsBits checks that taking each row's max in
// vector lanes gives the bits of the scalar max, for rows shorter and
// longer than a vector, with rows of ties and of zeros of both signs (where
// the lanes may pick the other zero).
func TestCausalSoftmaxKeepsItsBits(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 7))
	negZero := float32(math.Copysign(0, -1))
	for _, n := range []int{1, 2, 3, 4, 5, 7, 8, 9, 13, 64, 130} {
		scores := randSlice(r, n*n, 3)
		if n > 2 {
			for j := 0; j < n; j++ {
				scores[2*n+j] = 1.5 // ties
				scores[n+j] = []float32{0, negZero}[j%2]
			}
		}
		got, want := append([]float32(nil), scores...), append([]float32(nil), scores...)
		causalSoftmax(got, n, 0.125)
		softmaxRowsOneByOne(want, n, 0.125)
		sameBits(t, "softmax", got, want)

		dp := randSlice(r, n*n, 1)
		gotD, wantD := append([]float32(nil), dp...), append([]float32(nil), dp...)
		causalSoftmaxGrad(got, gotD, n, 0.125)
		softmaxGradRowsOneByOne(want, wantD, n, 0.125)
		sameBits(t, "softmax gradient", gotD, wantD)
	}
}

// BenchmarkCausalSoftmax times the softmax and its gradient over the
// block benchmark's b·h score matrices, against the scalar max before it.
func BenchmarkCausalSoftmax(b *testing.B) {
	const T, heads = benchCtx, benchB * benchHeads
	r := rand.New(rand.NewPCG(8, 8))
	scores, dp := randSlice(r, heads*T*T, 3), randSlice(r, heads*T*T, 1)
	p, d := make([]float32, len(scores)), make([]float32, len(dp))
	for _, c := range []struct {
		name string
		fwd  func([]float32, int, float32)
		bwd  func(p, d []float32, t int, scale float32)
	}{
		{"scalar-max", softmaxRowsOneByOne, softmaxGradRowsOneByOne},
		{"vector-max", causalSoftmax, causalSoftmaxGrad},
	} {
		b.Run(c.name, func(b *testing.B) {
			for b.Loop() {
				copy(p, scores)
				copy(d, dp)
				for h := range heads {
					m := p[h*T*T : (h+1)*T*T]
					c.fwd(m, T, 0.125)
					c.bwd(m, d[h*T*T:(h+1)*T*T], T, 0.125)
				}
			}
		})
	}
}
