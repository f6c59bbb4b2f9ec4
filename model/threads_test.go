package model

import (
	"math"
	"runtime"
	"testing"
)

// TestThreadCountDoesNotChangeBits trains a model large enough that the
// element-wise layers split their rows and attention splits its heads,
// with 1, 2 and 3 threads: losses and every parameter must be equal bit
// for bit, since each output element belongs to one goroutine whatever
// the split.
func TestThreadCountDoesNotChangeBits(t *testing.T) {
	cfg := TrainConfig{
		Model:          Config{Layers: 2, Dim: 64, Heads: 4, Ctx: 32, Seed: 5},
		Microbatches:   2,
		MicrobatchSize: 9, // 288 rows: uneven splits over 2 and 3 goroutines
		Optim:          OptimConfig{Kind: "adamw", TotalSteps: 10, Warmup: 1},
	}
	if rows := cfg.MicrobatchSize * cfg.Model.Ctx; rows*cfg.Model.Dim < minParallelFloats {
		t.Fatalf("config too small to split: %d floats per activation", rows*cfg.Model.Dim)
	}
	run := func(threads int) ([]float64, [][]float32) {
		defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(threads))
		tr, err := NewTrainer(cfg)
		if err != nil {
			t.Fatal(err)
		}
		sample := windowSource(7, tr.Cfg.Model.Vocab)
		var losses []float64
		for i := 0; i < 3; i++ {
			r, err := tr.TrainStep(sample)
			if err != nil {
				t.Fatal(err)
			}
			losses = append(losses, r.Loss)
		}
		var params [][]float32
		for _, s := range tr.Pipe.Shards {
			for _, p := range s.Params() {
				params = append(params, append([]float32(nil), p.W...))
			}
		}
		return losses, params
	}
	wantLoss, wantParams := run(1)
	for _, threads := range []int{2, 3} {
		loss, params := run(threads)
		for i := range wantLoss {
			if math.Float64bits(loss[i]) != math.Float64bits(wantLoss[i]) {
				t.Fatalf("%d threads: step %d loss %v, one thread %v", threads, i+1, loss[i], wantLoss[i])
			}
		}
		for i := range wantParams {
			for j := range wantParams[i] {
				if math.Float32bits(params[i][j]) != math.Float32bits(wantParams[i][j]) {
					t.Fatalf("%d threads: parameter %d element %d is %v, one thread %v", threads, i, j, params[i][j], wantParams[i][j])
				}
			}
		}
	}
}
