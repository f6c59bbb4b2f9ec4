package vecf32

import (
	"math"
	"math/rand"
	"testing"
)

// TestGELUVectorMatchesGo requires the vector GELU to give exactly the
// portable code's bits (forward output, kept tanh and backward gradient)
// for every length from 0 to 72 (tails of both vector widths included)
// and extreme inputs; where AVX-512 runs, with sixteen lanes and with
// eight.
func TestGELUVectorMatchesGo(t *testing.T) {
	if !hasAVX2 {
		t.Skip("no AVX2+FMA here (or STAGECOACH_GEMM=go): only the portable GELU runs")
	}
	for _, wide := range []bool{false, true} {
		if wide && !hasAVX512 {
			t.Log("no AVX-512 here: only the eight-lane GELU is checked")
			continue
		}
		t.Run(map[bool]string{false: "avx2", true: "avx512"}[wide], func(t *testing.T) {
			defer func(h bool) { hasAVX512 = h }(hasAVX512)
			hasAVX512 = wide
			checkGELUMatchesGo(t)
		})
	}
}

func checkGELUMatchesGo(t *testing.T) {
	r := rand.New(rand.NewSource(3))
	special := []float32{0, float32(math.Copysign(0, -1)), 1e-30, -1e-30, 10, -10, 30, -30, 1e4, -1e4, 3.4e38, -3.4e38}
	for n := 0; n <= 72; n++ {
		u := make([]float32, n)
		for i := range u {
			if i < len(special) && n > 30 {
				u[i] = special[i]
			} else {
				u[i] = float32(r.NormFloat64() * 3)
			}
		}
		a1, t1, a2, t2 := make([]float32, n), make([]float32, n), make([]float32, n), make([]float32, n)
		GELUForward(u, a1, t1)
		geluForwardGo(u, a2, t2)
		g1, g2 := make([]float32, n), make([]float32, n)
		for i := range g1 {
			g1[i] = float32(r.NormFloat64())
			g2[i] = g1[i]
		}
		GELUBackward(u, t1, g1)
		geluBackwardGo(u, t2, g2)
		for i := range u {
			if math.Float32bits(a1[i]) != math.Float32bits(a2[i]) || math.Float32bits(t1[i]) != math.Float32bits(t2[i]) ||
				math.Float32bits(g1[i]) != math.Float32bits(g2[i]) {
				t.Fatalf("n=%d u[%d]=%v: vector a=%v th=%v g=%v, Go a=%v th=%v g=%v", n, i, u[i], a1[i], t1[i], g1[i], a2[i], t2[i], g2[i])
			}
		}
	}
}

// TestGELUValues checks the approximation against float64 GELU(tanh).
func TestGELUValues(t *testing.T) {
	for _, x := range []float32{-6, -2, -1, -0.5, 0, 0.5, 1, 2, 6} {
		a, th := make([]float32, 1), make([]float32, 1)
		GELUForward([]float32{x}, a, th)
		xf := float64(x)
		want := 0.5 * xf * (1 + math.Tanh(geluC*(xf+0.044715*xf*xf*xf)))
		if math.Abs(float64(a[0])-want) > 1e-6*math.Max(1, math.Abs(want)) {
			t.Errorf("gelu(%v) = %v, want %v", x, a[0], want)
		}
	}
}

func BenchmarkGELU(b *testing.B) {
	n := 1 << 16
	u, a, th, g := make([]float32, n), make([]float32, n), make([]float32, n), make([]float32, n)
	for i := range u {
		u[i] = float32(i%200)/50 - 2
	}
	b.SetBytes(int64(16 * n))
	for i := 0; i < b.N; i++ {
		GELUForward(u, a, th)
		GELUBackward(u, th, g)
	}
}
