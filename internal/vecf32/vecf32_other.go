//go:build !amd64 || purego

package vecf32

const hasAVX2 = false

// hasAVX512 is a variable, as on amd64, for the tests that turn it off.
var hasAVX512 = false

func expSubAVX2(x *float32, n int, sub float32) { panic("vecf32: no AVX2 kernel here") }

func geluForwardAVX2(u, a, th *float32, n int) { panic("vecf32: no AVX2 kernel here") }

func geluBackwardAVX2(u, th, da *float32, n int) { panic("vecf32: no AVX2 kernel here") }

func geluForwardAVX512(u, a, th *float32, n int) { panic("vecf32: no AVX-512 kernel here") }

func geluBackwardAVX512(u, th, da *float32, n int) { panic("vecf32: no AVX-512 kernel here") }

func adamMomentsAVX2(grad, m, v *float32, n int, b1, c1, b2, c2 float64) {
	panic("vecf32: no AVX2 kernel here")
}

func adamApplyAVX2(w, m, v *float32, n int, bc1, bc2, eps, wd, scale float64) {
	panic("vecf32: no AVX2 kernel here")
}

func addAVX2(dst, src *float32, n int) { panic("vecf32: no AVX2 kernel here") }

func scaleAVX2(x *float32, n int, s float32) { panic("vecf32: no AVX2 kernel here") }

func scaleMulAVX2(out, x, gain *float32, n int, r float32) { panic("vecf32: no AVX2 kernel here") }

func addScaledProductAVX2(acc, a, b *float32, n int, r float32) {
	panic("vecf32: no AVX2 kernel here")
}

func rmsInputGradAVX2(dx, res, x, gain, dy *float32, n int, r, c float32) {
	panic("vecf32: no AVX2 kernel here")
}

func softmaxGradAVX2(p, d *float32, n int, dot, scale float32) {
	panic("vecf32: no AVX2 kernel here")
}

func scaleMaxAVX2(x *float32, n int, s float32) float32 { panic("vecf32: no AVX2 kernel here") }

func maxAVX2(x *float32, n int) float32 { panic("vecf32: no AVX2 kernel here") }
