package sgemm

import (
	"fmt"
	"math/rand/v2"
	"runtime"
	"testing"

	"gonum.org/v1/gonum/blas"
)

func BenchmarkSquare(b *testing.B) {
	for _, size := range []int{256, 512, 1024, 2048} {
		for _, threads := range []int{1, 2} {
			for _, pure := range []bool{false, true} {
				name := "asm"
				if pure {
					name = "gonum"
				}
				b.Run(fmt.Sprintf("%d/%s/threads=%d", size, name, threads), func(b *testing.B) {
					// gonum's Sgemm uses GOMAXPROCS goroutines.
					defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(threads))
					r := rand.New(rand.NewPCG(1, 1))
					a, lda, bb, ldb, c, ldc := operands(r, blas.NoTrans, blas.NoTrans, size, size, size, 0)
					im := Implementation{Threads: threads, PureGo: pure}
					for b.Loop() {
						im.Sgemm(blas.NoTrans, blas.NoTrans, size, size, size, 1, a, lda, bb, ldb, 0, c, ldc)
					}
					b.ReportMetric(2*float64(size*size*size)*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
				})
			}
		}
	}
}

// BenchmarkKernel runs the micro-kernel alone on L1-resident panels: the
// ceiling for everything else.
func BenchmarkKernel(b *testing.B) {
	if !hasKernel {
		b.Skip("no AVX2/FMA kernel on this CPU")
	}
	ap := make([]float32, kcBlock*mr)
	bp := make([]float32, kcBlock*nr)
	var c [mr * nr]float32
	for b.Loop() {
		kernel6x16(kcBlock, &ap[0], 1, mr, &bp[0], nr, &c[0], nr, 1, true)
	}
	b.ReportMetric(2*mr*nr*kcBlock*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
}

// BenchmarkBlockShapes multiplies the products of one transformer block's
// backward at the model benchmark's shapes (dim 256, hidden 1024, 1024
// rows of microbatch): the weight gradients, whose A is transposed and
// whose k is the long side, and the input gradients, whose B is.
func BenchmarkBlockShapes(b *testing.B) {
	const n, d, h = 1024, 256, 1024
	for _, s := range []struct {
		name    string
		tA, tB  blas.Transpose
		m, c, k int
	}{
		{"wqkv-grad", blas.Trans, blas.NoTrans, d, 3 * d, n},
		{"wo-grad", blas.Trans, blas.NoTrans, d, d, n},
		{"w1-grad", blas.Trans, blas.NoTrans, d, h, n},
		{"w2-grad", blas.Trans, blas.NoTrans, h, d, n},
		{"w1-input-grad", blas.NoTrans, blas.Trans, n, d, h},
		{"w2-input-grad", blas.NoTrans, blas.Trans, n, h, d},
	} {
		for _, threads := range []int{1, 2} {
			b.Run(fmt.Sprintf("%s/threads=%d", s.name, threads), func(b *testing.B) {
				r := rand.New(rand.NewPCG(1, 1))
				a, lda, bb, ldb, c, ldc := operands(r, s.tA, s.tB, s.m, s.c, s.k, 0)
				im := Implementation{Threads: threads}
				for b.Loop() {
					im.Sgemm(s.tA, s.tB, s.m, s.c, s.k, 1, a, lda, bb, ldb, 0, c, ldc)
				}
				b.ReportMetric(2*float64(s.m*s.c*s.k)*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
			})
		}
	}
}
