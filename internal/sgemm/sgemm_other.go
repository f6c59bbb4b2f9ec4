//go:build !amd64 || purego

package sgemm

const hasKernel = false

func kernel6x16(kc int, a, b, c *float32, ldc int, alpha float32, load bool) {
	panic("sgemm: no assembly kernel on this architecture")
}
