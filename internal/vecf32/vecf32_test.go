package vecf32

import (
	"math"
	"math/rand/v2"
	"testing"
)

// relErr is |got − e^x| / e^x in float64.
func relErr(got float32, x float64) float64 {
	want := math.Exp(x)
	return math.Abs(float64(got)-want) / want
}

func TestExpSubMatchesMathExp(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 1))
	const tol = 3.0 / (1 << 23) // 3 ulp at 1
	for _, n := range []int{1, 7, 8, 9, 31, 1000} {
		x := make([]float32, n)
		for i := range x {
			x[i] = float32(r.Float64()*170 - 85)
		}
		x[0] = 0
		orig := append([]float32(nil), x...)
		const sub = 1.5
		ExpSub(x, sub)
		for i, v := range x {
			arg := float64(orig[i] - sub)
			if e := relErr(v, arg); e > tol {
				t.Fatalf("n=%d: e^(%g) = %g, math.Exp %g (relative error %g)", n, arg, v, math.Exp(arg), e)
			}
			if g := expGo(orig[i] - sub); relErr(g, arg) > tol {
				t.Fatalf("expGo(%g) = %g, math.Exp %g", arg, g, math.Exp(arg))
			}
		}
	}
}

func TestExpSubClampsAndIsPositionIndependent(t *testing.T) {
	x := []float32{-1000, 1000, float32(math.Inf(-1)), 0, 1, -1, 2, 3, 0.5}
	ExpSub(x, 0)
	if !(x[0] > 0 && x[0] < 1e-37) || math.IsInf(float64(x[1]), 0) || x[1] < 1e38 || x[2] != x[0] || x[3] != 1 {
		t.Fatalf("clamped results %v", x[:4])
	}
	// The same value gives the same bits in the vector body and the tail.
	y := make([]float32, 17)
	for i := range y {
		y[i] = 0.3
	}
	ExpSub(y, 0)
	for i := range y {
		if math.Float32bits(y[i]) != math.Float32bits(y[0]) {
			t.Fatalf("e^0.3 differs by position: y[%d] = %g, y[0] = %g", i, y[i], y[0])
		}
	}
}

func BenchmarkExpSub(b *testing.B) {
	x := make([]float32, 4096)
	for b.Loop() {
		ExpSub(x, 0)
	}
}
