package vecf32

import (
	"math"
	"math/rand"
	"slices"
	"testing"
)

// TestElementwiseMatchesScalar requires each element-wise helper to give
// exactly the bits of the scalar loop the model ran before it (written out
// here as it was), for every length from 0 to 41, tails included, and with
// infinities, zeros of both signs and huge values among the inputs.
func TestElementwiseMatchesScalar(t *testing.T) {
	r := rand.New(rand.NewSource(5))
	special := []float32{0, float32(math.Copysign(0, -1)), float32(math.Inf(1)), float32(math.Inf(-1)), 1e-38, 3e38, -3e38, 1e-45}
	vec := func(n int, withSpecial bool) []float32 {
		v := make([]float32, n)
		for i := range v {
			v[i] = float32(r.NormFloat64() * 4)
			if withSpecial && i < len(special) {
				v[i] = special[(i+n)%len(special)]
			}
		}
		return v
	}
	same := func(name string, n int, got, want []float32) {
		t.Helper()
		for i := range want {
			if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
				t.Fatalf("%s n=%d [%d]: got %v, scalar %v", name, n, i, got[i], want[i])
			}
		}
	}
	for n := 0; n <= 41; n++ {
		for _, sp := range []bool{false, true} {
			x, g, dy := vec(n, sp), vec(n, false), vec(n, sp)
			s, c := float32(r.NormFloat64()), float32(r.NormFloat64())

			got, want := slices.Clone(dy), slices.Clone(dy)
			Add(got, x)
			for i, v := range x {
				want[i] += v
			}
			same("Add", n, got, want)

			got, want = slices.Clone(x), slices.Clone(x)
			Scale(got, s)
			for i := range want {
				want[i] *= s
			}
			same("Scale", n, got, want)

			// ScaleMax, also with NaNs among the inputs (passed over).
			xn := slices.Clone(x)
			if sp && n > 3 {
				xn[n/2], xn[n-1] = float32(math.NaN()), float32(math.NaN())
			}
			got, want = slices.Clone(xn), slices.Clone(xn)
			mx := ScaleMax(got, s)
			wantMx := float32(math.Inf(-1))
			for i := range want {
				want[i] *= s
				if want[i] > wantMx {
					wantMx = want[i]
				}
			}
			same("ScaleMax", n, got, want)
			if m := Max(want); m != wantMx {
				t.Fatalf("Max n=%d: %v, scalar %v", n, m, wantMx)
			}
			if mx != wantMx && !(math.IsNaN(float64(mx)) && math.IsNaN(float64(wantMx))) {
				t.Fatalf("ScaleMax n=%d: max %v, scalar %v", n, mx, wantMx)
			}

			got, want = make([]float32, n), make([]float32, n)
			ScaleMul(got, x, g, s)
			for j, v := range x {
				want[j] = v * s * g[j]
			}
			same("ScaleMul", n, got, want)

			got, want = slices.Clone(g), slices.Clone(g)
			AddScaledProduct(got, dy, x, s)
			for j, v := range x {
				want[j] += dy[j] * v * s
			}
			same("AddScaledProduct", n, got, want)

			got, want = slices.Clone(dy), slices.Clone(dy)
			RMSNormInputGrad(got, got, x, g, dy, s, c)
			for j, v := range x {
				want[j] += s*g[j]*dy[j] - c*v
			}
			same("RMSNormInputGrad in place", n, got, want)

			// Apart from the residual it adds to, the same bits.
			res := slices.Clone(x)
			for j := range res {
				res[j] = -2 * x[j]
			}
			got, want = make([]float32, n), slices.Clone(res)
			RMSNormInputGrad(got, res, x, g, dy, s, c)
			for j, v := range x {
				want[j] += s*g[j]*dy[j] - c*v
			}
			same("RMSNormInputGrad", n, got, want)

			got, want = slices.Clone(dy), slices.Clone(dy)
			SoftmaxGrad(x, got, c, s)
			for j := range want {
				want[j] = x[j] * (want[j] - c) * s
			}
			same("SoftmaxGrad", n, got, want)
		}
	}
}
