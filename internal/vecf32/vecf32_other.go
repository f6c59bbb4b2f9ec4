//go:build !amd64 || purego

package vecf32

const hasAVX2 = false

func expSubAVX2(x *float32, n int, sub float32) { panic("vecf32: no AVX2 kernel here") }

func geluForwardAVX2(u, a, th *float32, n int) { panic("vecf32: no AVX2 kernel here") }

func geluBackwardAVX2(u, th, da *float32, n int) { panic("vecf32: no AVX2 kernel here") }

func adamMomentsAVX2(grad, m, v *float32, n int, b1, c1, b2, c2 float64) {
	panic("vecf32: no AVX2 kernel here")
}

func adamApplyAVX2(w, m, v *float32, n int, bc1, bc2, eps, wd, scale float64) {
	panic("vecf32: no AVX2 kernel here")
}
