//go:build !amd64 || purego

package sgemm

const (
	hasKernel = false
	hasWide   = false
)

func kernel6x16(kc int, a *float32, rs, ps int, b *float32, bs int, c *float32, ldc int, alpha float32, load bool) {
	panic("sgemm: no assembly kernel on this architecture")
}

func kernel6x32(kc int, a *float32, rs, ps int, b0, b1 *float32, bs int, c *float32, ldc int, alpha float32, load bool) {
	panic("sgemm: no assembly kernel on this architecture")
}

func packB16(d *float32, b *float32, ldb, kc int) {
	panic("sgemm: no assembly kernel on this architecture")
}
