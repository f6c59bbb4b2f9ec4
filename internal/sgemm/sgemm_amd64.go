//go:build amd64 && !purego

package sgemm

import "golang.org/x/sys/cpu"

// hasKernel reports whether the assembly micro-kernel can run here:
// x/sys/cpu reports AVX2 and FMA only when the OS also saves YMM state.
var hasKernel = cpu.X86.HasAVX2 && cpu.X86.HasFMA

// kernel6x16 computes the 6×16 product of an A micro-panel and a B
// micro-panel, summing along k in ascending order, and writes
// c[i*ldc+j] = alpha·acc + c[i*ldc+j] when load is set, alpha·acc
// otherwise. Element (i, p) of A is at a[i*rs + p*ps] (packed: rs = 1,
// ps = 6); row p of B is the 16 floats at b[p*bs] (packed: bs = 16). kc
// must be at least 1.
//
//go:noescape
func kernel6x16(kc int, a *float32, rs, ps int, b *float32, bs int, c *float32, ldc int, alpha float32, load bool)
