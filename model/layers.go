package model

import (
	"math"

	"gonum.org/v1/gonum/blas"
	"gonum.org/v1/gonum/blas/blas32"

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
	blas32.Implementation().Sgemm(ta, tb, m, n, k, 1, a, lda, b, ldb, beta, c, ldc)
}

// rmsnormForward: out[i,:] = x[i,:] * rinv[i] * g, rinv[i] = 1/sqrt(mean(x²)+eps).
func rmsnormForward(x, g, out, rinv []float32, n, d int) {
	for i := 0; i < n; i++ {
		row := x[i*d : (i+1)*d]
		var ss float32
		for _, v := range row {
			ss += v * v
		}
		r := float32(1 / math.Sqrt(float64(ss/float32(d))+rmsEps))
		rinv[i] = r
		vecf32.ScaleMul(out[i*d:(i+1)*d], row, g, r)
	}
}

// rmsnormBackward adds the input gradient into dx (dx += ∂L/∂x) and the gain
// gradient into dg. Accumulating into dx lets the residual branch and the
// skip path share one buffer.
func rmsnormBackward(x, g, rinv, dout, dx, dg []float32, n, d int) {
	for i := 0; i < n; i++ {
		row := x[i*d : (i+1)*d]
		dy := dout[i*d : (i+1)*d]
		r := rinv[i]
		var dot float32
		for j, v := range row {
			dot += g[j] * dy[j] * v
		}
		vecf32.AddScaledProduct(dg, dy, row, r)
		c := r * r * r * dot / float32(d)
		vecf32.RMSNormInputGrad(dx[i*d:(i+1)*d], row, g, dy, r, c)
	}
}

// geluForward applies the tanh-approximated GELU (a = gelu(u)), keeping
// th = tanh(…) for backward; geluBackward overwrites da with ∂L/∂u. Both
// run eight lanes at a time in vecf32, with the same bits as the scalar
// code (the float64 math.Tanh was once a tenth of a training step).
func geluForward(u, a, th []float32) { vecf32.GELUForward(u, a, th) }

func geluBackward(u, th, da []float32) { vecf32.GELUBackward(u, th, da) }

// attnForward computes causal multi-head attention for b sequences of t
// positions. qkv rows are [q | k | v] (each d wide, heads contiguous inside),
// p receives the b·h t×t softmax matrices (zero above the diagonal), out
// receives the concatenated heads (n×d).
func attnForward(qkv, p, out []float32, b, t, d, h int) {
	hd := d / h
	scale := float32(1 / math.Sqrt(float64(hd)))
	ld := 3 * d
	for bi := 0; bi < b; bi++ {
		base := bi * t * ld
		for hi := 0; hi < h; hi++ {
			q := qkv[base+hi*hd:]
			k := qkv[base+d+hi*hd:]
			v := qkv[base+2*d+hi*hd:]
			pm := p[(bi*h+hi)*t*t : (bi*h+hi+1)*t*t]
			gemm(false, true, t, t, hd, q, ld, k, ld, false, pm, t)
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
			gemm(false, false, t, hd, t, pm, t, v, ld, false, out[bi*t*d+hi*hd:], d)
		}
	}
}

// attnBackward writes ∂L/∂qkv into dqkv given ∂L/∂out in dout. ds is a t×t
// scratch matrix.
func attnBackward(qkv, p, dout, dqkv, ds []float32, b, t, d, h int) {
	hd := d / h
	scale := float32(1 / math.Sqrt(float64(hd)))
	ld := 3 * d
	for bi := 0; bi < b; bi++ {
		base := bi * t * ld
		for hi := 0; hi < h; hi++ {
			q := qkv[base+hi*hd:]
			k := qkv[base+d+hi*hd:]
			v := qkv[base+2*d+hi*hd:]
			dq := dqkv[base+hi*hd:]
			dk := dqkv[base+d+hi*hd:]
			dv := dqkv[base+2*d+hi*hd:]
			do := dout[bi*t*d+hi*hd:]
			pm := p[(bi*h+hi)*t*t : (bi*h+hi+1)*t*t]
			// dP = dO·Vᵀ, dV = Pᵀ·dO
			gemm(false, true, t, t, hd, do, d, v, ld, false, ds, t)
			gemm(true, false, t, hd, t, pm, t, do, d, false, dv, ld)
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
			gemm(false, false, t, hd, t, ds, t, k, ld, false, dq, ld)
			gemm(true, false, t, hd, t, ds, t, q, ld, false, dk, ld)
		}
	}
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
