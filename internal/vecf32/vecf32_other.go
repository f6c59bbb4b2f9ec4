//go:build !amd64 || purego

package vecf32

const hasAVX2 = false

func expSubAVX2(x *float32, n int, sub float32) { panic("vecf32: no AVX2 kernel here") }
