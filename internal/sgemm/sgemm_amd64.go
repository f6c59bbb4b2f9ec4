//go:build amd64 && !purego

package sgemm

import "golang.org/x/sys/cpu"

// hasKernel reports whether the assembly micro-kernel can run here:
// x/sys/cpu reports AVX2 and FMA only when the OS also saves YMM state.
var hasKernel = cpu.X86.HasAVX2 && cpu.X86.HasFMA

// kernel6x16 computes the 6×16 product of a packed A micro-panel (kc
// groups of 6) and a packed B micro-panel (kc groups of 16), summing along
// k in ascending order, and writes c[i*ldc+j] = alpha·acc + c[i*ldc+j] when
// load is set, alpha·acc otherwise. kc must be at least 1.
//
//go:noescape
func kernel6x16(kc int, a, b, c *float32, ldc int, alpha float32, load bool)
