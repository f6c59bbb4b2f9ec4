//go:build amd64 && !purego

package vecf32

import (
	"os"

	"golang.org/x/sys/cpu"
)

// hasAVX2 selects the assembly. STAGECOACH_GEMM=go, which forces the
// pure-Go matrix multiply, forces the Go exponential too, so that
// processes on amd64 CPUs with and without AVX2+FMA compute alike.
var hasAVX2 = cpu.X86.HasAVX2 && cpu.X86.HasFMA && os.Getenv("STAGECOACH_GEMM") != "go"

// hasAVX512 selects the sixteen-lane GELU, which gives the eight-lane
// one's bits; STAGECOACH_GEMM=avx2 keeps to eight lanes, as it keeps the
// matrix multiply to its AVX2 kernel.
var hasAVX512 = hasAVX2 && cpu.X86.HasAVX512F && os.Getenv("STAGECOACH_GEMM") != "avx2"

// expSubAVX2 sets x[i] = e^(x[i] − sub) for the n elements at x; n must be
// a positive multiple of 8.
//
//go:noescape
func expSubAVX2(x *float32, n int, sub float32)

// geluForwardAVX2 and geluBackwardAVX2 are GELUForward and GELUBackward
// for n elements, n a positive multiple of 8.
//
//go:noescape
func geluForwardAVX2(u, a, th *float32, n int)

//go:noescape
func geluBackwardAVX2(u, th, da *float32, n int)

// geluForwardAVX512 and geluBackwardAVX512 are the same for n a positive
// multiple of 16.
//
//go:noescape
func geluForwardAVX512(u, a, th *float32, n int)

//go:noescape
func geluBackwardAVX512(u, th, da *float32, n int)

// adamMomentsAVX2 and adamApplyAVX2 are AdamMoments and AdamApply for n
// elements, n a positive multiple of 4.
//
//go:noescape
func adamMomentsAVX2(grad, m, v *float32, n int, b1, c1, b2, c2 float64)

//go:noescape
func adamApplyAVX2(w, m, v *float32, n int, bc1, bc2, eps, wd, scale float64)

// The element-wise kernels of elem.go, for n elements, n a positive
// multiple of 8.
//
//go:noescape
func addAVX2(dst, src *float32, n int)

//go:noescape
func scaleAVX2(x *float32, n int, s float32)

//go:noescape
func scaleMulAVX2(out, x, gain *float32, n int, r float32)

//go:noescape
func addScaledProductAVX2(acc, a, b *float32, n int, r float32)

//go:noescape
func rmsInputGradAVX2(dx, res, x, gain, dy *float32, n int, r, c float32)

//go:noescape
func softmaxGradAVX2(p, d *float32, n int, dot, scale float32)

// scaleMaxAVX2 is ScaleMax for n elements, n a positive multiple of 8.
//
//go:noescape
func scaleMaxAVX2(x *float32, n int, s float32) float32

// maxAVX2 is Max for n elements, n a positive multiple of 8.
//
//go:noescape
func maxAVX2(x *float32, n int) float32
