package vecf32

import "math"

// AdamMoments updates Adam's moments from the gradient g, in float64 and
// stored as float32: m = β1·m + (1−β1)·g, v = β2·v + (1−β2)·g². The
// vector kernel performs the same operations in the same order (no FMA),
// so results do not depend on which one ran.
func AdamMoments(g, m, v []float32, b1, b2 float64) {
	m, v = m[:len(g)], v[:len(g)]
	c1, c2 := 1-b1, 1-b2
	n := 0
	if hasAVX2 {
		n = len(g) &^ 3
		if n > 0 {
			adamMomentsAVX2(&g[0], &m[0], &v[0], n, b1, c1, b2, c2)
		}
	}
	for i := n; i < len(g); i++ {
		gi := float64(g[i])
		m[i] = float32(b1*float64(m[i]) + c1*gi)
		v[i] = float32(b2*float64(v[i]) + c2*gi*gi)
	}
}

// AdamDirection is Adam's update direction for one element: the
// bias-corrected m̂/(√v̂ + eps) plus decoupled weight decay wd·w.
func AdamDirection(w, m, v float32, bc1, bc2, eps, wd float64) float64 {
	mh := float64(m) / bc1
	vh := float64(v) / bc2
	return mh/(math.Sqrt(vh)+eps) + wd*float64(w)
}

// AdamApply sets w = w − scale·AdamDirection(w, m, v, …) element-wise.
func AdamApply(w, m, v []float32, bc1, bc2, eps, wd, scale float64) {
	m, v = m[:len(w)], v[:len(w)]
	n := 0
	if hasAVX2 {
		n = len(w) &^ 3
		if n > 0 {
			adamApplyAVX2(&w[0], &m[0], &v[0], n, bc1, bc2, eps, wd, scale)
		}
	}
	for i := n; i < len(w); i++ {
		w[i] = float32(float64(w[i]) - scale*AdamDirection(w[i], m[i], v[i], bc1, bc2, eps, wd))
	}
}
