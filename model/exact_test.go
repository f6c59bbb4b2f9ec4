package model

import (
	"math"
	"math/rand/v2"
	"testing"
)

// smallTrainConfig is tiny so that the exactness tests run in milliseconds.
func smallTrainConfig(layers int, kind string) TrainConfig {
	return TrainConfig{
		Model:          Config{Layers: layers, Dim: 16, Heads: 2, Ctx: 8, Seed: 3},
		Microbatches:   3,
		MicrobatchSize: 2,
		Optim:          OptimConfig{Kind: kind, TotalSteps: 10, Warmup: 2},
	}
}

// windowSource is a deterministic stand-in for the data sampler.
func windowSource(seed uint64, vocab int) func([]int32) error {
	r := rand.New(rand.NewPCG(seed, 1))
	return func(dst []int32) error {
		for i := range dst {
			// a learnable pattern plus noise
			if i > 0 && r.IntN(4) != 0 {
				dst[i] = (dst[i-1] + 1) % int32(vocab)
			} else {
				dst[i] = int32(r.IntN(vocab))
			}
		}
		return nil
	}
}

// manualStep drives shards exactly as a GPipe runtime on separate processes
// would: all forwards (ascending mb), then losses and backwards in ascending
// mb order, per-shard FinishGrad, global norm from per-tensor squares summed
// in canonical order, clip, per-shard optimizer update.
func manualStep(t *testing.T, cfg TrainConfig, shards []*Shard, layout Layout, opts []*Optimizer, step int, sample func([]int32) error) float64 {
	t.Helper()
	m, b, T := cfg.Microbatches, cfg.MicrobatchSize, cfg.Model.Ctx
	for _, s := range shards {
		s.ZeroGrad()
	}
	hidden := make([]*Activations, m)
	targets := make([][]int32, m)
	for mb := 0; mb < m; mb++ {
		win := make([]int32, b*(T+1))
		sample(win)
		x, tg, err := splitWindows(win, b, T)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range shards {
			// a real runtime would serialise between processes
			wire, _ := x.MarshalBinary()
			x = new(Activations)
			if err := x.UnmarshalBinary(wire); err != nil {
				t.Fatal(err)
			}
			if x, err = s.Forward(mb, x); err != nil {
				t.Fatal(err)
			}
		}
		hidden[mb], targets[mb] = x, tg
	}
	head := shards[len(shards)-1]
	if layout == HeadFirst {
		head = shards[0]
	}
	var total float64
	for mb := 0; mb < m; mb++ {
		l, g, err := head.Loss(mb, hidden[mb], targets[mb])
		if err != nil {
			t.Fatal(err)
		}
		total += l
		for i := len(shards) - 1; i >= 0; i-- {
			if g, err = shards[i].Backward(mb, g); err != nil {
				t.Fatal(err)
			}
		}
	}
	sq := map[int]float64{}
	for _, s := range shards {
		if v := s.FinishGrad(); v != m {
			t.Fatalf("shard visited %d times, want %d", v, m)
		}
		for _, p := range s.Params() {
			sq[p.Index] = SumSquares(p)
		}
	}
	var ss float64
	for i := 0; i < len(sq); i++ {
		ss += sq[i]
	}
	f := ClipFactor(math.Sqrt(ss), cfg.Optim.ClipNorm)
	lr := opts[0].Cfg.LRAt(step)
	for i, s := range shards {
		ScaleGrads(s.Params(), f)
		opts[i].Update(step, lr)
	}
	return total / float64(m)
}

// TestShardedTrainingIsBitIdentical is the exactness contract: the
// single-process trainer (one shard) and the same model cut into 2 and 3
// shards, driven stage by stage with activations serialised in between,
// end with bit-identical parameters, for both layouts and both optimizers.
func TestShardedTrainingIsBitIdentical(t *testing.T) {
	const steps = 3
	for _, kind := range []string{"adamw", "lamb"} {
		cfg := smallTrainConfig(3, kind)
		ref, err := NewTrainer(cfg)
		if err != nil {
			t.Fatal(err)
		}
		src := windowSource(11, cfg.Model.WithDefaults().Vocab)
		var refLoss float64
		for i := 0; i < steps; i++ {
			r, err := ref.TrainStep(src)
			if err != nil {
				t.Fatal(err)
			}
			refLoss = r.Loss
		}
		want := ref.Pipe.Params()
		for _, layout := range []Layout{HeadFirst, HeadLast} {
			for _, stages := range []int{2, 3} {
				p, err := NewPipeline(cfg.Model, stages, layout)
				if err != nil {
					t.Fatal(err)
				}
				var opts []*Optimizer
				for _, s := range p.Shards {
					o, _ := NewOptimizer(cfg.Optim, s.Params())
					opts = append(opts, o)
				}
				src := windowSource(11, p.Cfg.Vocab)
				var loss float64
				for step := 1; step <= steps; step++ {
					loss = manualStep(t, cfg, p.Shards, layout, opts, step, src)
				}
				if math.Float64bits(loss) != math.Float64bits(refLoss) {
					t.Errorf("%s layout %d stages %d: loss %v, reference %v", kind, layout, stages, loss, refLoss)
				}
				got := p.Params()
				if len(got) != len(want) {
					t.Fatalf("%d tensors vs %d", len(got), len(want))
				}
				for i := range got {
					for j := range got[i].W {
						if math.Float32bits(got[i].W[j]) != math.Float32bits(want[i].W[j]) {
							t.Fatalf("%s layout %d stages %d: %s[%d] = %v, reference %v", kind, layout, stages, got[i].Name, j, got[i].W[j], want[i].W[j])
						}
					}
				}
			}
		}
	}
}

// TestInitIndependentOfSharding: each tensor's initial values depend only
// on the seed and its name.
func TestInitIndependentOfSharding(t *testing.T) {
	cfg := Config{Layers: 4, Dim: 8, Heads: 2, Ctx: 4, Seed: 5}
	a, _ := NewPipeline(cfg, 1, HeadFirst)
	b, _ := NewPipeline(cfg, 4, HeadLast)
	pa, pb := a.Params(), b.Params()
	for i := range pa {
		if pa[i].Name != pb[i].Name {
			t.Fatalf("order differs: %s vs %s", pa[i].Name, pb[i].Name)
		}
		for j := range pa[i].W {
			if pa[i].W[j] != pb[i].W[j] {
				t.Fatalf("%s differs", pa[i].Name)
			}
		}
	}
	names := TensorNames(cfg.WithDefaults())
	for i, p := range pa {
		if names[i] != p.Name || p.Index != i {
			t.Fatalf("canonical order: %d %s %s", i, names[i], p.Name)
		}
	}
}

// TestSkipDividesByVisits: a shard skipped by one of three microbatches
// divides its gradient by 2, and skipping leaves the hidden state unchanged.
func TestSkipDividesByVisits(t *testing.T) {
	cfg := smallTrainConfig(3, "adamw")
	p, _ := NewPipeline(cfg.Model, 3, HeadFirst)
	src := windowSource(2, p.Cfg.Vocab)
	for _, s := range p.Shards {
		s.ZeroGrad()
	}
	win := make([]int32, 2*(cfg.Model.Ctx+1))
	for mb := 0; mb < 3; mb++ {
		src(win)
		skip := map[int]bool{1: mb == 1}
		if _, err := p.TrainMicrobatch(mb, win, 2, cfg.Model.Ctx, skip); err != nil {
			t.Fatal(err)
		}
	}
	if v := p.Shards[1].FinishGrad(); v != 2 {
		t.Fatalf("skipped shard visits %d, want 2", v)
	}
	if v := p.Shards[2].FinishGrad(); v != 3 {
		t.Fatalf("full shard visits %d, want 3", v)
	}
	if _, err := p.TrainMicrobatch(9, win, 2, cfg.Model.Ctx, map[int]bool{0: true}); err == nil {
		t.Fatal("skipping stage 0 accepted")
	}
}
