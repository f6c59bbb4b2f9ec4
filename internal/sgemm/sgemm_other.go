//go:build !amd64 || purego

package sgemm

const hasKernel = false

func kernel6x16(kc int, a *float32, rs, ps int, b *float32, bs int, c *float32, ldc int, alpha float32, load bool) {
	panic("sgemm: no assembly kernel on this architecture")
}
