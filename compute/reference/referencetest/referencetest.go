// Package referencetest checks a compute backend against the built-in
// model's single-process trainer: driven through compute/reference, a
// backend computing the Go model (in process, or behind the compute
// protocol) must give model.Trainer's step results, weights and moments,
// bit for bit.
package referencetest

import (
	"context"
	"math"
	"math/rand"
	"testing"

	"stagecoach/compute"
	"stagecoach/compute/reference"
	"stagecoach/model"
	"stagecoach/model/train"
)

// Sampler is a deterministic source of token windows.
func Sampler(seed int64) func([]int32) error {
	r := rand.New(rand.NewSource(seed))
	return func(dst []int32) error {
		for i := range dst {
			dst[i] = int32(r.Intn(256))
		}
		return nil
	}
}

// MatchesModelTrainer trains a tiny model for a few steps with b through
// the reference loop and with model.Trainer, for several splits, both
// head layouts and both optimizers, and fails t at the first difference.
func MatchesModelTrainer(t *testing.T, b compute.Backend) {
	t.Helper()
	for _, tc := range []struct {
		stages int
		layout model.Layout
		opt    string
	}{{1, model.HeadLast, "adamw"}, {3, model.HeadLast, "adamw"}, {2, model.HeadFirst, "lamb"}} {
		cfg := model.TrainConfig{
			Model:  model.Config{Layers: 3, Dim: 16, Heads: 2, Ctx: 8, Seed: 7},
			Stages: tc.stages, Layout: tc.layout, Microbatches: 3, MicrobatchSize: 2,
			Optim: model.OptimConfig{Kind: tc.opt, TotalSteps: 4},
		}
		want, err := model.NewTrainer(cfg)
		if err != nil {
			t.Fatal(err)
		}
		got, err := reference.New(context.Background(), b, cfg)
		if err != nil {
			t.Fatal(err)
		}
		sw, sg := Sampler(1), Sampler(1)
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
				t.Fatalf("%+v step %d: through %s %+v, model.Trainer %+v", tc, step, b.Name(), rg, rw)
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
				if math.Float32bits(s.W[k]) != math.Float32bits(w.T.W[k]) || math.Float32bits(s.M[k]) != math.Float32bits(w.M[k]) ||
					math.Float32bits(s.V[k]) != math.Float32bits(w.V[k]) {
					t.Fatalf("%+v: %s[%d] differs", tc, s.Name, k)
				}
			}
		}
		// Evaluation between steps: the same mean loss as the model's,
		// eight windows at a time (17 windows: a short last batch).
		ev := make([]int32, 17*(cfg.Model.Ctx+1))
		_ = Sampler(9)(ev)
		l1, err := got.ValLoss(ev, cfg.Model.Ctx)
		if err != nil {
			t.Fatal(err)
		}
		l2, err := train.ValLoss(want.Pipe, ev, cfg.Model.Ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		if l1 != l2 {
			t.Fatalf("%+v: validation loss %v, want %v", tc, l1, l2)
		}
		got.Close()
	}
}
