package reference

import (
	"context"
	"math"
	"math/rand"
	"testing"

	"stagecoach/compute/builtin"
	"stagecoach/model"
)

func tinyConfig(stages int, layout model.Layout, opt string) model.TrainConfig {
	return model.TrainConfig{
		Model:  model.Config{Layers: 3, Dim: 16, Heads: 2, Ctx: 8, Seed: 7},
		Stages: stages, Layout: layout, Microbatches: 3, MicrobatchSize: 2,
		Optim: model.OptimConfig{Kind: opt, TotalSteps: 4},
	}
}

// sampler returns a deterministic source of token windows.
func sampler(seed int64) func([]int32) error {
	r := rand.New(rand.NewSource(seed))
	return func(dst []int32) error {
		for i := range dst {
			dst[i] = int32(r.Intn(256))
		}
		return nil
	}
}

// TestBuiltinMatchesModelTrainer drives the built-in backend through the
// reference loop and requires model.Trainer's losses, norms and weights,
// bit for bit, for several splits, both head layouts and both optimizers.
func TestBuiltinMatchesModelTrainer(t *testing.T) {
	for _, tc := range []struct {
		stages int
		layout model.Layout
		opt    string
	}{{1, model.HeadLast, "adamw"}, {3, model.HeadLast, "adamw"}, {2, model.HeadFirst, "lamb"}} {
		cfg := tinyConfig(tc.stages, tc.layout, tc.opt)
		want, err := model.NewTrainer(cfg)
		if err != nil {
			t.Fatal(err)
		}
		got, err := New(context.Background(), builtin.Backend{}, cfg)
		if err != nil {
			t.Fatal(err)
		}
		sw, sg := sampler(1), sampler(1)
		for step := 1; step <= 4; step++ {
			rw, err := want.TrainStep(sw)
			if err != nil {
				t.Fatal(err)
			}
			rg, err := got.TrainStep(sg)
			if err != nil {
				t.Fatal(err)
			}
			if rw != rg {
				t.Fatalf("%+v step %d: reference %+v, model.Trainer %+v", tc, step, rg, rw)
			}
		}
		states, err := got.States()
		if err != nil {
			t.Fatal(err)
		}
		ws := want.States()
		if len(states) != len(ws) {
			t.Fatalf("%d tensors, want %d", len(states), len(ws))
		}
		for i, s := range states {
			w := ws[i]
			if s.Name != w.T.Name {
				t.Fatalf("tensor %d is %s, want %s", i, s.Name, w.T.Name)
			}
			for k := range s.W {
				if math.Float32bits(s.W[k]) != math.Float32bits(w.T.W[k]) || s.M[k] != w.M[k] || s.V[k] != w.V[k] {
					t.Fatalf("%+v: %s[%d] differs", tc, s.Name, k)
				}
			}
		}
		ev := make([]int32, 2*got.WindowLen())
		_ = sampler(9)(ev)
		l1, err := got.EvalLoss(ev)
		if err != nil {
			t.Fatal(err)
		}
		l2, err := want.Pipe.EvalLoss(ev[:got.WindowLen()], cfg.MicrobatchSize, cfg.Model.Ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		l3, err := want.Pipe.EvalLoss(ev[got.WindowLen():], cfg.MicrobatchSize, cfg.Model.Ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		if l1 != (l2+l3)/2 {
			t.Fatalf("eval loss %v, want %v", l1, (l2+l3)/2)
		}
		got.Close()
	}
}

func TestNewRefusesBadConfig(t *testing.T) {
	cfg := tinyConfig(1, model.HeadLast, "adamw")
	cfg.Microbatches = 0
	if _, err := New(context.Background(), builtin.Backend{}, cfg); err == nil {
		t.Fatal("zero microbatches accepted")
	}
	cfg = tinyConfig(5, model.HeadLast, "adamw")
	if _, err := New(context.Background(), builtin.Backend{}, cfg); err == nil {
		t.Fatal("more stages than layers accepted")
	}
	tr, err := New(context.Background(), builtin.Backend{}, tinyConfig(1, model.HeadLast, "adamw"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tr.EvalLoss(make([]int32, 5)); err == nil {
		t.Fatal("a ragged evaluation set accepted")
	}
}
