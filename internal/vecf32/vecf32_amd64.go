//go:build amd64 && !purego

package vecf32

import "golang.org/x/sys/cpu"

var hasAVX2 = cpu.X86.HasAVX2 && cpu.X86.HasFMA

// expSubAVX2 sets x[i] = e^(x[i] − sub) for the n elements at x; n must be
// a positive multiple of 8.
//
//go:noescape
func expSubAVX2(x *float32, n int, sub float32)
