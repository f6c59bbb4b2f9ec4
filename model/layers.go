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
// Sgemm served by internal/sgemm (AVX-512 or AVX2/FMA assembly, which give
// the same bits; gonum's pure Go on other CPUs or under
// STAGECOACH_GEMM=go). Both give each output element to one goroutine and
// sum along k in a fixed order, so results are bit-identical run to run
// and independent of GOMAXPROCS.

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

// The smallest buffers worth splitting: below them the hand-off to
// another goroutine costs more than the second core saves. GELU computes
// a tanh per element; the residual adds and RMSNorm do a few flops per
// element and are bound by memory, so a second core pays for them only
// on larger buffers, and only because a helper of internal/parallel is
// still awake after the product before them (a sleeping thread takes
// about 30 µs to wake on the VMs we measure on, most of what the second
// core saves).
const (
	minParallelFloats      = 1 << 14
	minParallelCheapFloats = 1 << 16
)

// rows runs f over [0, n) rows of d floats, split across goroutines when the
// buffer holds at least minFloats floats.
func rows(n, d, minFloats int, f func(lo, hi int)) {
	if n*d < minFloats {
		f(0, n)
		return
	}
	parallel.For(runtime.GOMAXPROCS(0), n, func(_, lo, hi int) { f(lo, hi) })
}

// addRows: dst += src over n rows of d.
func addRows(dst, src []float32, n, d int) {
	rows(n, d, minParallelCheapFloats, func(lo, hi int) { vecf32.Add(dst[lo*d:hi*d], src[lo*d:hi*d]) })
}

// rmsnormForward: out[i,:] = x[i,:] * rinv[i] * g, rinv[i] = 1/sqrt(mean(x²)+eps).
func rmsnormForward(x, g, out, rinv []float32, n, d int) {
	rows(n, d, minParallelCheapFloats, func(lo, hi int) {
		finish := func(i int, ss float32) {
			r := float32(1 / math.Sqrt(float64(ss/float32(d))+rmsEps))
			rinv[i] = r
			vecf32.ScaleMul(out[i*d:(i+1)*d], x[i*d:(i+1)*d], g, r)
		}
		i := lo
		for ; i+4 <= hi; i += 4 {
			s := rowSumSquares4(x[i*d:(i+4)*d], d)
			for q := range s {
				finish(i+q, s[q])
			}
		}
		for ; i < hi; i++ {
			var ss float32
			for _, v := range x[i*d : (i+1)*d] {
				ss += v * v
			}
			finish(i, ss)
		}
	})
}

// rowSumSquares4 is the sum of squares of each of the four rows of d in x,
// each summed in ascending order as one row alone would be (the bits do
// not change); the four sums run side by side, so the additions of one row
// do not wait for each other.
func rowSumSquares4(x []float32, d int) [4]float32 {
	r0, r1, r2, r3 := x[:d], x[d:2*d], x[2*d:3*d], x[3*d:4*d]
	var s0, s1, s2, s3 float32
	for j, v := range r0 {
		w1, w2, w3 := r1[j], r2[j], r3[j]
		s0 += v * v
		s1 += w1 * w1
		s2 += w2 * w2
		s3 += w3 * w3
	}
	return [4]float32{s0, s1, s2, s3}
}

// rmsnormBackward sets dx = res + ∂L/∂x and adds the gain gradient into dg.
// res is the skip path's gradient, often dx itself, so that the residual
// branch and the skip path share one buffer. The input gradient is per row
// and runs split; the gain gradient sums over rows and runs after it, in
// row order.
func rmsnormBackward(x, g, rinv, dout, res, dx, dg []float32, n, d int) {
	rows(n, d, minParallelCheapFloats, func(lo, hi int) {
		finish := func(i int, dot float32) {
			r := rinv[i]
			c := r * r * r * dot / float32(d)
			vecf32.RMSNormInputGrad(dx[i*d:(i+1)*d], res[i*d:(i+1)*d], x[i*d:(i+1)*d], g, dout[i*d:(i+1)*d], r, c)
		}
		i := lo
		for ; i+4 <= hi; i += 4 {
			dots := rowGainDots4(x[i*d:(i+4)*d], dout[i*d:(i+4)*d], g, d)
			for q := range dots {
				finish(i+q, dots[q])
			}
		}
		for ; i < hi; i++ {
			row, dy := x[i*d:(i+1)*d], dout[i*d:(i+1)*d]
			var dot float32
			for j, v := range row {
				dot += g[j] * dy[j] * v
			}
			finish(i, dot)
		}
	})
	for i := 0; i < n; i++ {
		vecf32.AddScaledProduct(dg, dout[i*d:(i+1)*d], x[i*d:(i+1)*d], rinv[i])
	}
}

// rowGainDots4 is Σ_j g[j]·dy[j]·x[j] for each of four rows of d (x and dy
// row-major), each in ascending j as one row alone would sum it, the four
// side by side.
func rowGainDots4(x, dy, g []float32, d int) [4]float32 {
	x0, x1, x2, x3 := x[:d], x[d:2*d], x[2*d:3*d], x[3*d:4*d]
	y0, y1, y2, y3 := dy[:d], dy[d:2*d], dy[2*d:3*d], dy[3*d:4*d]
	g = g[:d]
	var s0, s1, s2, s3 float32
	for j, v := range x0 {
		gj := g[j]
		s0 += gj * y0[j] * v
		s1 += gj * y1[j] * x1[j]
		s2 += gj * y2[j] * x2[j]
		s3 += gj * y3[j] * x3[j]
	}
	return [4]float32{s0, s1, s2, s3}
}

// geluForward applies the tanh-approximated GELU (a = gelu(u)) to n rows of
// d, keeping th = tanh(…) for backward; geluBackward overwrites da with
// ∂L/∂u. Both run eight lanes at a time in vecf32, with the same bits as the
// scalar code (the float64 math.Tanh was once a tenth of a training step).
func geluForward(u, a, th []float32, n, d int) {
	rows(n, d, minParallelFloats, func(lo, hi int) { vecf32.GELUForward(u[lo*d:hi*d], a[lo*d:hi*d], th[lo*d:hi*d]) })
}

func geluBackward(u, th, da []float32, n, d int) {
	rows(n, d, minParallelFloats, func(lo, hi int) { vecf32.GELUBackward(u[lo*d:hi*d], th[lo*d:hi*d], da[lo*d:hi*d]) })
}

// attnForward computes causal multi-head attention for b sequences of t
// positions. qkv rows are [q | k | v] (each d wide, heads contiguous inside),
// p receives the b·h t×t softmax matrices (zero above the diagonal), out
// receives the concatenated heads (n×d). The b·h heads are independent and
// write disjoint outputs, so they run on up to GOMAXPROCS goroutines
// (each product on its own, a goroutine that is through taking heads
// another has not started) with the same bits as one after another.
func attnForward(qkv, p, out []float32, b, t, d, h int) {
	hd := d / h
	scale := float32(1 / math.Sqrt(float64(hd)))
	ld := 3 * d
	parallel.Steal(runtime.GOMAXPROCS(0), b*h, func(_, bh int) {
		bi, head := bh/h, bh%h
		q := qkv[bi*t*ld+head*hd:]
		k, v := q[d:], q[2*d:]
		pm := p[bh*t*t : (bh+1)*t*t]
		gemmOn(serialBLAS, false, true, t, t, hd, q, ld, k, ld, false, pm, t)
		causalSoftmax(pm, t, scale)
		gemmOn(serialBLAS, false, false, t, hd, t, pm, t, v, ld, false, out[bi*t*d+head*hd:], d)
	})
}

// causalSoftmax turns the t×t scores m into the rows of causal attention
// weights in place: row i is softmax(scale·m[i][0..i]) followed by zeros,
// its sum taken in ascending j.
func causalSoftmax(m []float32, t int, scale float32) {
	for i := 0; i < t; i++ {
		row := m[i*t : i*t+i+1]
		vecf32.ExpSub(row, vecf32.ScaleMax(row, scale))
		var sum float32
		for _, e := range row {
			sum += e
		}
		vecf32.Scale(row, 1/sum)
		clear(m[i*t+i+1 : (i+1)*t])
	}
}

// causalSoftmaxGrad turns ∂L/∂P in d into ∂L/∂scores in place given the
// causal attention weights p (t×t): dS = P ⊙ (dP − rowsum(dP ⊙ P)), times
// the score scale, zero above the diagonal; each row's sum in ascending j.
func causalSoftmaxGrad(p, d []float32, t int, scale float32) {
	for i := 0; i < t; i++ {
		pr, dr := p[i*t:i*t+i+1], d[i*t:i*t+i+1]
		var dot float32
		for j, v := range pr {
			dot += v * dr[j]
		}
		vecf32.SoftmaxGrad(pr, dr, dot, scale)
		clear(d[i*t+i+1 : (i+1)*t])
	}
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
	parallel.Steal(workers, b*h, func(w, bh int) {
		ds := ds[w*t*t : (w+1)*t*t]
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
		causalSoftmaxGrad(pm, ds, t, scale)
		// dQ = dS·K, dK = dSᵀ·Q
		gemmOn(serialBLAS, false, false, t, hd, t, ds, t, k, ld, false, dq, ld)
		gemmOn(serialBLAS, true, false, t, hd, t, ds, t, q, ld, false, dk, ld)
	})
}

// crossEntropy turns logits (n×v) into ∂L/∂logits in place for the mean
// token loss and returns the summed (not averaged) loss in float64.
func crossEntropy(logits []float32, targets []int32, n, v int) float64 {
	var total float64
	inv := 1 / float32(n)
	for i := 0; i < n; i++ {
		row := logits[i*v : (i+1)*v]
		mx := vecf32.Max(row)
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
