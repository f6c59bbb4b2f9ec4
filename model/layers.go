package model

import (
	"math"
	"runtime"

	"gonum.org/v1/gonum/blas"
	"gonum.org/v1/gonum/blas/blas32"

	"stagecoach/internal/parallel"
	"stagecoach/internal/sgemm"
	"stagecoach/internal/vecf32"
)

// The layer kernels below work on row-major float32 slices. Every buffer is
// supplied by the caller so the hot path never allocates; the shard owns and
// reuses them. Matrix products go through gonum's blas32 interface, with
// Sgemm served by internal/sgemm (AVX2/FMA assembly; gonum's pure Go on
// other CPUs or under STAGECOACH_GEMM=go). Both give each output element to
// one goroutine and sum along k in a fixed order, so results are
// bit-identical run to run and independent of GOMAXPROCS.

func init() { blas32.Use(sgemm.Implementation{}) }

const rmsEps = 1e-5

// gemm computes C = A·B (+ C when accumulate), with A m×k and B k×n after the
// optional transposes. lda, ldb, ldc are row strides.
func gemm(tA, tB bool, m, n, k int, a []float32, lda int, b []float32, ldb int, accumulate bool, c []float32, ldc int) {
	gemmOn(blas32.Implementation(), tA, tB, m, n, k, a, lda, b, ldb, accumulate, c, ldc)
}

// serialBLAS multiplies on the calling goroutine alone, for products that
// already run side by side (attention's heads).
var serialBLAS = sgemm.Implementation{Threads: 1}

func gemmOn(impl blas.Float32, tA, tB bool, m, n, k int, a []float32, lda int, b []float32, ldb int, accumulate bool, c []float32, ldc int) {
	ta, tb := blas.NoTrans, blas.NoTrans
	if tA {
		ta = blas.Trans
	}
	if tB {
		tb = blas.Trans
	}
	var beta float32
	if accumulate {
		beta = 1
	}
	impl.Sgemm(ta, tb, m, n, k, 1, a, lda, b, ldb, beta, c, ldc)
}

// The element-wise layers below (RMSNorm, GELU, the residual adds) split
// their rows over GOMAXPROCS goroutines once a buffer is big enough to pay
// for the hand-off: every output element is computed by one goroutine with
// the same operations, so the bits do not depend on the split. Reductions
// across rows (RMSNorm's gain gradient) stay on one goroutine, in row order.

// minParallelFloats is the smallest buffer worth splitting: below it the
// goroutine hand-off costs more than the second core saves.
const minParallelFloats = 1 << 14

// rows runs f over [0, n) rows of d floats, split across goroutines when the
// buffer is large.
func rows(n, d int, f func(lo, hi int)) {
	if n*d < minParallelFloats {
		f(0, n)
		return
	}
	parallel.For(runtime.GOMAXPROCS(0), n, func(_, lo, hi int) { f(lo, hi) })
}

// addRows: dst += src over n rows of d.
func addRows(dst, src []float32, n, d int) {
	rows(n, d, func(lo, hi int) { vecf32.Add(dst[lo*d:hi*d], src[lo*d:hi*d]) })
}

// rmsnormForward: out[i,:] = x[i,:] * rinv[i] * g, rinv[i] = 1/sqrt(mean(x²)+eps).
func rmsnormForward(x, g, out, rinv []float32, n, d int) {
	rows(n, d, func(lo, hi int) {
		for i := lo; i < hi; i++ {
			row := x[i*d : (i+1)*d]
			var ss float32
			for _, v := range row {
				ss += v * v
			}
			r := float32(1 / math.Sqrt(float64(ss/float32(d))+rmsEps))
			rinv[i] = r
			vecf32.ScaleMul(out[i*d:(i+1)*d], row, g, r)
		}
	})
}

// rmsnormBackward adds the input gradient into dx (dx += ∂L/∂x) and the gain
// gradient into dg. Accumulating into dx lets the residual branch and the
// skip path share one buffer. The input gradient is per row and runs split;
// the gain gradient sums over rows and runs after it, in row order.
func rmsnormBackward(x, g, rinv, dout, dx, dg []float32, n, d int) {
	rows(n, d, func(lo, hi int) {
		for i := lo; i < hi; i++ {
			row := x[i*d : (i+1)*d]
			dy := dout[i*d : (i+1)*d]
			r := rinv[i]
			var dot float32
			for j, v := range row {
				dot += g[j] * dy[j] * v
			}
			c := r * r * r * dot / float32(d)
			vecf32.RMSNormInputGrad(dx[i*d:(i+1)*d], row, g, dy, r, c)
		}
	})
	for i := 0; i < n; i++ {
		vecf32.AddScaledProduct(dg, dout[i*d:(i+1)*d], x[i*d:(i+1)*d], rinv[i])
	}
}

// geluForward applies the tanh-approximated GELU (a = gelu(u)) to n rows of
// d, keeping th = tanh(…) for backward; geluBackward overwrites da with
// ∂L/∂u. Both run eight lanes at a time in vecf32, with the same bits as the
// scalar code (the float64 math.Tanh was once a tenth of a training step).
func geluForward(u, a, th []float32, n, d int) {
	rows(n, d, func(lo, hi int) { vecf32.GELUForward(u[lo*d:hi*d], a[lo*d:hi*d], th[lo*d:hi*d]) })
}

func geluBackward(u, th, da []float32, n, d int) {
	rows(n, d, func(lo, hi int) { vecf32.GELUBackward(u[lo*d:hi*d], th[lo*d:hi*d], da[lo*d:hi*d]) })
}

// attnForward computes causal multi-head attention for b sequences of t
// positions. qkv rows are [q | k | v] (each d wide, heads contiguous inside),
// p receives the b·h t×t softmax matrices (zero above the diagonal), out
// receives the concatenated heads (n×d). The b·h heads are independent and
// write disjoint outputs, so they run on up to GOMAXPROCS goroutines
// (each product on its own) with the same bits as one after another.
func attnForward(qkv, p, out []float32, b, t, d, h int) {
	hd := d / h
	scale := float32(1 / math.Sqrt(float64(hd)))
	ld := 3 * d
	parallel.For(runtime.GOMAXPROCS(0), b*h, func(_, lo, hi int) {
		for bh := lo; bh < hi; bh++ {
			bi, head := bh/h, bh%h
			q := qkv[bi*t*ld+head*hd:]
			k, v := q[d:], q[2*d:]
			pm := p[bh*t*t : (bh+1)*t*t]
			gemmOn(serialBLAS, false, true, t, t, hd, q, ld, k, ld, false, pm, t)
			for i := 0; i < t; i++ {
				row := pm[i*t : (i+1)*t]
				vecf32.Scale(row[:i+1], scale)
				mx := float32(math.Inf(-1))
				for _, x := range row[:i+1] {
					if x > mx {
						mx = x
					}
				}
				vecf32.ExpSub(row[:i+1], mx)
				var sum float32
				for _, e := range row[:i+1] {
					sum += e
				}
				vecf32.Scale(row[:i+1], 1/sum)
				clear(row[i+1:])
			}
			gemmOn(serialBLAS, false, false, t, hd, t, pm, t, v, ld, false, out[bi*t*d+head*hd:], d)
		}
	})
}

// attnWorkers is how many goroutines attention's backward uses, each with
// a t×t scratch matrix of its own: attnScratch(t) floats in all.
func attnWorkers() int { return runtime.GOMAXPROCS(0) }

func attnScratch(t int) int { return attnWorkers() * t * t }

// attnBackward writes ∂L/∂qkv into dqkv given ∂L/∂out in dout. ds is
// scratch of at least one t×t matrix; with attnScratch(t) floats every
// worker has one. The heads run side by side as in attnForward.
func attnBackward(qkv, p, dout, dqkv, ds []float32, b, t, d, h int) {
	hd := d / h
	scale := float32(1 / math.Sqrt(float64(hd)))
	ld := 3 * d
	workers := min(attnWorkers(), len(ds)/(t*t))
	parallel.For(workers, b*h, func(w, lo, hi int) {
		ds := ds[w*t*t : (w+1)*t*t]
		for bh := lo; bh < hi; bh++ {
			bi, head := bh/h, bh%h
			q := qkv[bi*t*ld+head*hd:]
			k, v := q[d:], q[2*d:]
			dq := dqkv[bi*t*ld+head*hd:]
			dk, dv := dq[d:], dq[2*d:]
			do := dout[bi*t*d+head*hd:]
			pm := p[bh*t*t : (bh+1)*t*t]
			// dP = dO·Vᵀ, dV = Pᵀ·dO
			gemmOn(serialBLAS, false, true, t, t, hd, do, d, v, ld, false, ds, t)
			gemmOn(serialBLAS, true, false, t, hd, t, pm, t, do, d, false, dv, ld)
			// softmax backward: dS = P ⊙ (dP − rowsum(dP ⊙ P)), times the score scale.
			for i := 0; i < t; i++ {
				pr := pm[i*t : (i+1)*t]
				dr := ds[i*t : (i+1)*t]
				var dot float32
				for j := 0; j <= i; j++ {
					dot += pr[j] * dr[j]
				}
				vecf32.SoftmaxGrad(pr[:i+1], dr[:i+1], dot, scale)
				clear(dr[i+1:])
			}
			// dQ = dS·K, dK = dSᵀ·Q
			gemmOn(serialBLAS, false, false, t, hd, t, ds, t, k, ld, false, dq, ld)
			gemmOn(serialBLAS, true, false, t, hd, t, ds, t, q, ld, false, dk, ld)
		}
	})
}

// crossEntropy turns logits (n×v) into ∂L/∂logits in place for the mean
// token loss and returns the summed (not averaged) loss in float64.
func crossEntropy(logits []float32, targets []int32, n, v int) float64 {
	var total float64
	inv := 1 / float32(n)
	for i := 0; i < n; i++ {
		row := logits[i*v : (i+1)*v]
		mx := row[0]
		for _, x := range row[1:] {
			if x > mx {
				mx = x
			}
		}
		tg := targets[i]
		zt := row[tg] - mx
		vecf32.ExpSub(row, mx)
		var sum float32
		for _, e := range row {
			sum += e
		}
		total += math.Log(float64(sum)) - float64(zt)
		vecf32.Scale(row, 1/sum*inv)
		row[tg] -= inv
	}
	return total
}
