//go:build amd64 && !purego

package sgemm

import "golang.org/x/sys/cpu"

// hasKernel reports whether the assembly micro-kernel can run here:
// x/sys/cpu reports AVX2 and FMA only when the OS also saves YMM state.
var hasKernel = cpu.X86.HasAVX2 && cpu.X86.HasFMA

// hasWide reports whether the AVX-512 kernel can run here (x/sys/cpu
// reports AVX-512F only when the OS also saves ZMM and mask state).
var hasWide = hasKernel && cpu.X86.HasAVX512F

// kernel6x16 computes the 6×16 product of an A micro-panel and a B
// micro-panel, summing along k in ascending order, and writes
// c[i*ldc+j] = alpha·acc + c[i*ldc+j] when load is set, alpha·acc
// otherwise. Element (i, p) of A is at a[i*rs + p*ps] (packed: rs = 1,
// ps = 6); row p of B is the 16 floats at b[p*bs] (packed: bs = 16). kc
// must be at least 1.
//
//go:noescape
func kernel6x16(kc int, a *float32, rs, ps int, b *float32, bs int, c *float32, ldc int, alpha float32, load bool)

// kernel6x32 is kernel6x16 on two B micro-panels at once (AVX-512): the
// 6×16 tile of b0 goes to c, that of b1 to the 16 columns after it. Row p
// of each panel is at b0[p*bs] and b1[p*bs]. Every element gets the same
// operations in the same order as from kernel6x16.
//
//go:noescape
func kernel6x32(kc int, a *float32, rs, ps int, b0, b1 *float32, bs int, c *float32, ldc int, alpha float32, load bool)

// packB16 copies kc rows of 16 floats, row q from b[q*ldb:], to d[16q:]
// (kc must be at least 0; d and b must hold them).
//
//go:noescape
func packB16(d *float32, b *float32, ldb, kc int)
