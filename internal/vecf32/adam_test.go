package vecf32

import (
	"math"
	"math/rand"
	"testing"
)

// TestAdamMatchesScalar requires the vector AdamW loops to give the bits
// of the scalar formulas model.Optimizer used (written out here), for
// every length up to 40 and a spread of values.
func TestAdamMatchesScalar(t *testing.T) {
	r := rand.New(rand.NewSource(5))
	for n := 0; n <= 40; n++ {
		g, m, v, w := make([]float32, n), make([]float32, n), make([]float32, n), make([]float32, n)
		for i := range g {
			scale := math.Pow(10, float64(r.Intn(12)-8))
			g[i] = float32(r.NormFloat64() * scale)
			m[i] = float32(r.NormFloat64() * scale)
			v[i] = float32(math.Abs(r.NormFloat64()) * scale * scale)
			w[i] = float32(r.NormFloat64() * 0.1)
		}
		b1, b2, eps, wd, lr := 0.9, 0.95, 1e-8, 0.1, 3e-3
		bc1, bc2 := 1-math.Pow(b1, 7), 1-math.Pow(b2, 7)
		m2, v2, w2 := append([]float32(nil), m...), append([]float32(nil), v...), append([]float32(nil), w...)
		for i, g32 := range g {
			gi := float64(g32)
			m2[i] = float32(b1*float64(m2[i]) + (1-b1)*gi)
			v2[i] = float32(b2*float64(v2[i]) + (1-b2)*gi*gi)
		}
		for i := range w2 {
			mh := float64(m2[i]) / bc1
			vh := float64(v2[i]) / bc2
			d := mh/(math.Sqrt(vh)+eps) + wd*float64(w2[i])
			w2[i] = float32(float64(w2[i]) - lr*d)
		}
		AdamMoments(g, m, v, b1, b2)
		AdamApply(w, m, v, bc1, bc2, eps, wd, lr)
		for i := range g {
			if math.Float32bits(m[i]) != math.Float32bits(m2[i]) || math.Float32bits(v[i]) != math.Float32bits(v2[i]) ||
				math.Float32bits(w[i]) != math.Float32bits(w2[i]) {
				t.Fatalf("n=%d i=%d: vector m=%v v=%v w=%v, scalar m=%v v=%v w=%v", n, i, m[i], v[i], w[i], m2[i], v2[i], w2[i])
			}
		}
	}
}

func BenchmarkAdamW(b *testing.B) {
	n := 1 << 16
	g, m, v, w := make([]float32, n), make([]float32, n), make([]float32, n), make([]float32, n)
	for i := range g {
		g[i], w[i] = float32(i%97)*1e-3, float32(i%89)*1e-2
	}
	b.SetBytes(int64(16 * n))
	for i := 0; i < b.N; i++ {
		AdamMoments(g, m, v, 0.9, 0.95)
		AdamApply(w, m, v, 0.1, 0.05, 1e-8, 0.1, 1e-3)
	}
}
