// Package vecf32 has the element-wise float32 math of the model's hot
// loops: an exponential over a slice, eight lanes at a time with AVX2 and
// FMA on amd64 (Go assembly), the same polynomial in plain Go elsewhere
// and under STAGECOACH_GEMM=go.
//
// The exponential is Cephes' expf: n = round(x·log2 e), r = x − n·ln 2 in
// two parts, a degree-7 polynomial for e^r, times 2^n. Inputs are clamped
// to [−87.3, 88] (results stay finite and normal); the error is within
// 2 ulp of e^x over that range. Each element's result depends only on its
// value, never on its position or the slice length, so callers keep their
// exactness guarantees.
package vecf32

import "math"

// ExpSub sets x[i] = e^(x[i] − sub).
func ExpSub(x []float32, sub float32) {
	n := 0
	if hasAVX2 {
		n = len(x) &^ 7
		if n > 0 {
			expSubAVX2(&x[0], n, sub)
		}
		if n < len(x) {
			// The tail goes through the same vector code, padded.
			var t [8]float32
			copy(t[:], x[n:])
			expSubAVX2(&t[0], 8, sub)
			copy(x[n:], t[:])
		}
		return
	}
	for i := range x {
		x[i] = expGo(x[i] - sub)
	}
}

const (
	expHi = 88
	expLo = -87.3
	log2e = 1.44269504088896341
	ln2Hi = 0.693359375
	ln2Lo = -2.12194440e-4
	expP0 = 1.9875691500e-4
	expP1 = 1.3981999507e-3
	expP2 = 8.3334519073e-3
	expP3 = 4.1665795894e-2
	expP4 = 1.6666665459e-1
	expP5 = 5.0000001201e-1
)

// expGo is the portable form of the vector kernel.
func expGo(x float32) float32 {
	x = min(max(x, expLo), expHi)
	n := float32(math.RoundToEven(float64(x * log2e)))
	r := x - n*ln2Hi
	r -= n * ln2Lo
	y := float32(expP0)
	y = y*r + expP1
	y = y*r + expP2
	y = y*r + expP3
	y = y*r + expP4
	y = y*r + expP5
	y = y*(r*r) + (r + 1)
	return y * math.Float32frombits(uint32(int32(n)+127)<<23)
}
