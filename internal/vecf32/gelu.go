package vecf32

const geluC = 0.7978845608028654 // sqrt(2/π)

// GELUForward is the tanh approximation of GELU: a[i] = gelu(u[i]), and
// th[i] keeps tanh(sqrt(2/π)·(u + 0.044715·u³)) for GELUBackward. tanh(y)
// is 1 − 2/(e^{2y}+1), with this package's exponential. The slices must
// have the same length. Sixteen lanes (AVX-512) or eight (AVX2) give the
// same bits.
func GELUForward(u, a, th []float32) {
	a, th = a[:len(u)], th[:len(u)]
	if !hasAVX2 {
		geluForwardGo(u, a, th)
		return
	}
	n := len(u) &^ 7
	if w := len(u) &^ 15; hasAVX512 && w > 0 {
		geluForwardAVX512(&u[0], &a[0], &th[0], w)
		if w < n {
			geluForwardAVX2(&u[w], &a[w], &th[w], n-w)
		}
	} else if n > 0 {
		geluForwardAVX2(&u[0], &a[0], &th[0], n)
	}
	if n < len(u) {
		// The tail goes through the same vector code, padded.
		var tu, ta, tt [8]float32
		copy(tu[:], u[n:])
		geluForwardAVX2(&tu[0], &ta[0], &tt[0], 8)
		copy(a[n:], ta[:])
		copy(th[n:], tt[:])
	}
}

// GELUBackward turns da from ∂L/∂gelu(u) into ∂L/∂u, from u and the th
// GELUForward kept.
func GELUBackward(u, th, da []float32) {
	th, da = th[:len(u)], da[:len(u)]
	if !hasAVX2 {
		geluBackwardGo(u, th, da)
		return
	}
	n := len(u) &^ 7
	if w := len(u) &^ 15; hasAVX512 && w > 0 {
		geluBackwardAVX512(&u[0], &th[0], &da[0], w)
		if w < n {
			geluBackwardAVX2(&u[w], &th[w], &da[w], n-w)
		}
	} else if n > 0 {
		geluBackwardAVX2(&u[0], &th[0], &da[0], n)
	}
	if n < len(u) {
		var tu, tt, td [8]float32
		copy(tu[:], u[n:])
		copy(tt[:], th[n:])
		copy(td[:], da[n:])
		geluBackwardAVX2(&tu[0], &tt[0], &td[0], 8)
		copy(da[n:], td[:])
	}
}

// geluForwardGo is the portable form; the vector kernel performs the
// same float32 operations in the same order (outside the exponential,
// whose vector form uses FMA), so on one CPU both give the same a and th.
func geluForwardGo(u, a, th []float32) {
	for i, x := range u {
		th[i] = 2 * geluC * (x + 0.044715*x*x*x)
	}
	ExpSub(th, 0)
	for i, x := range u {
		t := 1 - 2/(th[i]+1)
		th[i] = t
		a[i] = 0.5 * x * (1 + t)
	}
}

func geluBackwardGo(u, th, da []float32) {
	for i, x := range u {
		t := th[i]
		d := 0.5*(1+t) + 0.5*x*(1-t*t)*geluC*(1+3*0.044715*x*x)
		da[i] *= d
	}
}
