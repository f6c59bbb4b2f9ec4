package vecf32

import "math"

// The element-wise helpers below run eight lanes at a time on amd64 with
// AVX2 and perform, per element, the same float32 operations in the same
// order as their scalar form (no FMA), so both give the same bits and the
// model's recorded figures do not depend on which one ran. Sums along a
// row are not here: vectorising them would change their order.

// Add sets dst[i] += src[i].
func Add(dst, src []float32) {
	dst = dst[:len(src)]
	n := vectorLen(len(src))
	if n > 0 {
		addAVX2(&dst[0], &src[0], n)
	}
	for i := n; i < len(src); i++ {
		dst[i] += src[i]
	}
}

// Scale sets x[i] *= s.
func Scale(x []float32, s float32) {
	n := vectorLen(len(x))
	if n > 0 {
		scaleAVX2(&x[0], n, s)
	}
	for i := n; i < len(x); i++ {
		x[i] *= s
	}
}

// Max returns the largest element of x: -Inf for none, NaNs passed over
// (a largest zero may come back with either sign).
func Max(x []float32) float32 {
	mx := float32(math.Inf(-1))
	n := vectorLen(len(x))
	if n > 0 {
		mx = maxAVX2(&x[0], n)
	}
	for _, v := range x[n:] {
		if v > mx {
			mx = v
		}
	}
	return mx
}

// ScaleMax sets x[i] *= s and returns Max(x).
func ScaleMax(x []float32, s float32) float32 {
	mx := float32(math.Inf(-1))
	n := vectorLen(len(x))
	if n > 0 {
		mx = scaleMaxAVX2(&x[0], n, s)
	}
	for i := n; i < len(x); i++ {
		x[i] *= s
		if x[i] > mx {
			mx = x[i]
		}
	}
	return mx
}

// ScaleMul sets out[i] = x[i]·r·g[i], RMSNorm's output row.
func ScaleMul(out, x, g []float32, r float32) {
	out, g = out[:len(x)], g[:len(x)]
	n := vectorLen(len(x))
	if n > 0 {
		scaleMulAVX2(&out[0], &x[0], &g[0], n, r)
	}
	for i := n; i < len(x); i++ {
		out[i] = float32(x[i]*r) * g[i]
	}
}

// AddScaledProduct sets acc[i] += a[i]·b[i]·r, RMSNorm's gain gradient.
func AddScaledProduct(acc, a, b []float32, r float32) {
	acc, b = acc[:len(a)], b[:len(a)]
	n := vectorLen(len(a))
	if n > 0 {
		addScaledProductAVX2(&acc[0], &a[0], &b[0], n, r)
	}
	for i := n; i < len(a); i++ {
		acc[i] += float32(float32(a[i]*b[i]) * r)
	}
}

// RMSNormInputGrad sets dx[i] = res[i] + (r·g[i]·dy[i] − c·x[i]): RMSNorm's
// input gradient for one row with rinv r and c = r³·(g⊙dy)·x / d, added to
// the residual stream's gradient res (which may be dx itself).
func RMSNormInputGrad(dx, res, x, g, dy []float32, r, c float32) {
	dx, res, g, dy = dx[:len(x)], res[:len(x)], g[:len(x)], dy[:len(x)]
	n := vectorLen(len(x))
	if n > 0 {
		rmsInputGradAVX2(&dx[0], &res[0], &x[0], &g[0], &dy[0], n, r, c)
	}
	for i := n; i < len(x); i++ {
		dx[i] = res[i] + (float32(float32(r*g[i])*dy[i]) - float32(c*x[i]))
	}
}

// SoftmaxGrad sets d[i] = p[i]·(d[i] − dot)·scale, a softmax row's
// backward with dot = Σ p⊙d.
func SoftmaxGrad(p, d []float32, dot, scale float32) {
	d = d[:len(p)]
	n := vectorLen(len(p))
	if n > 0 {
		softmaxGradAVX2(&p[0], &d[0], n, dot, scale)
	}
	for i := n; i < len(p); i++ {
		d[i] = float32(p[i]*(d[i]-dot)) * scale
	}
}

// vectorLen is how many of n elements the vector kernels take: a multiple
// of eight, or none without AVX2.
func vectorLen(n int) int {
	if !hasAVX2 {
		return 0
	}
	return n &^ 7
}
