package model

import (
	"math/rand/v2"
	"testing"
	"time"

	"stagecoach/internal/benchwarm"
	"stagecoach/internal/parallel"
)

// Benchmark shapes from the issue: one block, dim 256, ctx 128, microbatch 8.
const (
	benchDim   = 256
	benchHeads = 4
	benchCtx   = 128
	benchB     = 8
)

// blockFlops counts the floating-point operations of one block's forward
// and backward as executed: every matrix product is 2·m·n·k; backward does
// two products per forward product. The causal attention products are
// counted over the full t×t square because that is what runs.
func blockFlops(b, t, d, hidden int) float64 {
	n := float64(b * t)
	D, H := float64(d), float64(hidden)
	dense := 2 * n * D * (3*D + D + H + H)        // qkv, wo, w1, w2
	attn := 2 * float64(b) * float64(t*t) * D * 2 // QKᵀ and PV over all heads
	return 3 * (dense + attn)
}

// warmUp runs step until the process is in its steady state (see
// internal/benchwarm), for at most two seconds.
func warmUp(step func()) {
	_ = benchwarm.Run(func() error { step(); return nil }, 2*time.Second)
}

// benchBlockStep returns one forward and backward of a dim-256 block on a
// microbatch of 8 × ctx 128.
func benchBlockStep(b *testing.B) func() {
	cfg := Config{Layers: 1, Dim: benchDim, Heads: benchHeads, Ctx: benchCtx, Seed: 1}
	s, err := NewShard(cfg, ShardSpec{Lo: 0, Hi: 1})
	if err != nil {
		b.Fatal(err)
	}
	r := rand.New(rand.NewPCG(1, 1))
	n := benchB * benchCtx * benchDim
	x := &Activations{Shape: []int{benchB, benchCtx, benchDim}, Data: randSlice(r, n, 1)}
	g := &Activations{Shape: []int{benchB, benchCtx, benchDim}, Data: randSlice(r, n, 1)}
	return func() {
		if _, err := s.Forward(0, x); err != nil {
			b.Fatal(err)
		}
		if _, err := s.Backward(0, g); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkBlockForwardBackward(b *testing.B) {
	step := benchBlockStep(b)
	warmUp(step)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		step()
	}
	b.ReportMetric(blockFlops(benchB, benchCtx, benchDim, 4*benchDim)*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
}

// BenchmarkMatMulRaw runs exactly the block's sequence of Sgemm calls (same
// shapes, transposes and strides; attention's heads side by side as in the
// block), with nothing in between: the ceiling for the block benchmark.
func BenchmarkMatMulRaw(b *testing.B) {
	step := benchRawStep()
	warmUp(step)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		step()
	}
	b.ReportMetric(blockFlops(benchB, benchCtx, benchDim, 4*benchDim)*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
}

// BenchmarkBlockOverKernel alternates one block step and one run of its bare
// products, so both see the same machine load, and reports the block's
// share of the kernel's rate (raw time / block time): the figure to read on
// a shared machine.
func BenchmarkBlockOverKernel(b *testing.B) {
	block, raw := benchBlockStep(b), benchRawStep()
	warmUp(func() { block(); raw() })
	var tb, tr time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		block()
		t1 := time.Now()
		raw()
		tb += t1.Sub(t0)
		tr += time.Since(t1)
	}
	flops := blockFlops(benchB, benchCtx, benchDim, 4*benchDim) * float64(b.N) / 1e9
	b.ReportMetric(flops/tb.Seconds(), "block-GFLOP/s")
	b.ReportMetric(flops/tr.Seconds(), "kernel-GFLOP/s")
	b.ReportMetric(tr.Seconds()/tb.Seconds(), "block/kernel")
}

// BenchmarkBlockElementwise times the element-wise layers of one block's
// forward and backward at the block benchmark's shapes (two RMSNorms each
// way, two residual adds, GELU each way): the part of the block, besides
// softmax, that is not a matrix product.
func BenchmarkBlockElementwise(b *testing.B) {
	const N, D, Hd = benchB * benchCtx, benchDim, 4 * benchDim
	r := rand.New(rand.NewPCG(3, 3))
	buf := func(n int) []float32 { return randSlice(r, n, 1) }
	x, y, dx, g, dg, rinv := buf(N*D), buf(N*D), buf(N*D), buf(D), buf(D), buf(N)
	u, a, th := buf(N*Hd), buf(N*Hd), buf(N*Hd)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for range 2 {
			rmsnormForward(x, g, y, rinv, N, D)
			addRows(y, x, N, D)
			rmsnormBackward(x, g, rinv, y, dx, dx, dg, N, D)
		}
		geluForward(u, a, th, N, Hd)
		geluBackward(u, th, a, N, Hd)
	}
}

// BenchmarkElementwiseLayers times the cheap element-wise layers one by
// one at the block benchmark's shapes: RMSNorm forward and backward and a
// residual add (with -cpu 1,2 the second shows whether splitting rows
// would pay; at these shapes they run on one goroutine).
func BenchmarkElementwiseLayers(b *testing.B) {
	const N, D = benchB * benchCtx, benchDim
	r := rand.New(rand.NewPCG(3, 3))
	buf := func(n int) []float32 { return randSlice(r, n, 1) }
	x, y, dx, g, dg, rinv := buf(N*D), buf(N*D), buf(N*D), buf(D), buf(D), buf(N)
	b.Run("rmsnorm-forward", func(b *testing.B) {
		for b.Loop() {
			rmsnormForward(x, g, y, rinv, N, D)
		}
	})
	b.Run("rmsnorm-backward", func(b *testing.B) {
		for b.Loop() {
			rmsnormBackward(x, g, rinv, y, dx, dx, dg, N, D)
		}
	})
	b.Run("residual-add", func(b *testing.B) {
		for b.Loop() {
			addRows(y, x, N, D)
		}
	})
}

// benchRawStep returns the block's sequence of Sgemm calls alone (see
// BenchmarkMatMulRaw).
func benchRawStep() func() {
	const B, T, D, Hd, H = benchB, benchCtx, benchDim, 4 * benchDim, benchHeads
	N, hd := B*T, D/H
	r := rand.New(rand.NewPCG(2, 2))
	buf := func(n int) []float32 { return randSlice(r, n, 1) }
	x, qkv, att, h, u := buf(N*D), buf(N*3*D), buf(N*D), buf(N*D), buf(N*Hd)
	wqkv, wo, w1, w2 := buf(D*3*D), buf(D*D), buf(D*Hd), buf(Hd*D)
	gqkv, gwo, gw1, gw2 := buf(D*3*D), buf(D*D), buf(D*Hd), buf(Hd*D)
	p, ds, out, o2 := buf(B*H*T*T), buf(attnScratch(T)), buf(N*D), buf(N*Hd)
	heads := func(f func(w, bh int)) {
		parallel.Steal(attnWorkers(), B*H, f)
	}
	return func() {
		// forward
		gemm(false, false, N, 3*D, D, x, D, wqkv, 3*D, false, qkv, 3*D)
		heads(func(_, bh int) {
			bi, hi := bh/H, bh%H
			q, pm := qkv[bi*T*3*D+hi*hd:], p[bh*T*T:(bh+1)*T*T]
			gemmOn(serialBLAS, false, true, T, T, hd, q, 3*D, q[D:], 3*D, false, pm, T)
			gemmOn(serialBLAS, false, false, T, hd, T, pm, T, q[2*D:], 3*D, false, att[bi*T*D+hi*hd:], D)
		})
		gemm(false, false, N, D, D, att, D, wo, D, false, out, D)
		gemm(false, false, N, Hd, D, h, D, w1, Hd, false, u, Hd)
		gemm(false, false, N, D, Hd, u, Hd, w2, D, false, out, D)
		// backward
		gemm(true, false, Hd, D, N, u, Hd, out, D, false, gw2, D)
		gemm(false, true, N, Hd, D, out, D, w2, D, false, o2, Hd)
		gemm(true, false, D, Hd, N, h, D, o2, Hd, false, gw1, Hd)
		gemm(false, true, N, D, Hd, o2, Hd, w1, Hd, false, h, D)
		gemm(true, false, D, D, N, att, D, out, D, false, gwo, D)
		gemm(false, true, N, D, D, out, D, wo, D, false, att, D)
		heads(func(w, bh int) {
			bi, hi := bh/H, bh%H
			q, pm, dsw := qkv[bi*T*3*D+hi*hd:], p[bh*T*T:(bh+1)*T*T], ds[w*T*T:(w+1)*T*T]
			do := att[bi*T*D+hi*hd:]
			gemmOn(serialBLAS, false, true, T, T, hd, do, D, q[2*D:], 3*D, false, dsw, T)
			gemmOn(serialBLAS, true, false, T, hd, T, pm, T, do, D, false, out[bi*T*D+hi*hd:], D)
			gemmOn(serialBLAS, false, false, T, hd, T, dsw, T, q[D:], 3*D, false, out[bi*T*D+hi*hd:], D)
			gemmOn(serialBLAS, true, false, T, hd, T, dsw, T, q, 3*D, false, out[bi*T*D+hi*hd:], D)
		})
		gemm(true, false, D, 3*D, N, x, D, qkv, 3*D, false, gqkv, 3*D)
		gemm(false, true, N, D, 3*D, qkv, 3*D, wqkv, 3*D, false, x, D)
	}
}

// BenchmarkTrainStepDefault is one optimizer step of `stagecoach train`'s
// default model (4 layers, dim 128, 4 heads, ctx 64, 4 microbatches of 8):
// what the profile of a training run looks like, GEMM and everything else.
func BenchmarkTrainStepDefault(b *testing.B) {
	tr, err := NewTrainer(TrainConfig{Model: Config{Layers: 4, Dim: 128, Heads: 4, Ctx: 64, Seed: 1},
		Microbatches: 4, MicrobatchSize: 8, Optim: OptimConfig{Kind: "adamw", TotalSteps: 1 << 30}})
	if err != nil {
		b.Fatal(err)
	}
	r := rand.New(rand.NewPCG(3, 3))
	sample := func(dst []int32) error {
		for i := range dst {
			dst[i] = int32(r.IntN(256))
		}
		return nil
	}
	warmUp(func() {
		if _, err := tr.TrainStep(sample); err != nil {
			b.Fatal(err)
		}
	})
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := tr.TrainStep(sample); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(4*8*64*b.N)/b.Elapsed().Seconds(), "tokens/s")
}
