package reference_test

import (
	"context"
	"testing"

	"stagecoach/compute/builtin"
	"stagecoach/compute/reference"
	"stagecoach/compute/reference/referencetest"
	"stagecoach/model"
)

func tinyConfig(stages int, layout model.Layout, opt string) model.TrainConfig {
	return model.TrainConfig{
		Model:  model.Config{Layers: 3, Dim: 16, Heads: 2, Ctx: 8, Seed: 7},
		Stages: stages, Layout: layout, Microbatches: 3, MicrobatchSize: 2,
		Optim: model.OptimConfig{Kind: opt, TotalSteps: 4},
	}
}

// TestBuiltinMatchesModelTrainer drives the built-in backend through the
// reference loop and requires model.Trainer's losses, norms, weights and
// moments, bit for bit, for several splits, both head layouts and both
// optimizers.
func TestBuiltinMatchesModelTrainer(t *testing.T) {
	referencetest.MatchesModelTrainer(t, builtin.Backend{})
}

func TestNewRefusesBadConfig(t *testing.T) {
	cfg := tinyConfig(1, model.HeadLast, "adamw")
	cfg.Microbatches = 0
	if _, err := reference.New(context.Background(), builtin.Backend{}, cfg); err == nil {
		t.Fatal("zero microbatches accepted")
	}
	cfg = tinyConfig(5, model.HeadLast, "adamw")
	if _, err := reference.New(context.Background(), builtin.Backend{}, cfg); err == nil {
		t.Fatal("more stages than layers accepted")
	}
	tr, err := reference.New(context.Background(), builtin.Backend{}, tinyConfig(1, model.HeadLast, "adamw"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tr.ValLoss(make([]int32, 5), 8); err == nil {
		t.Fatal("an evaluation set without one whole window accepted")
	}
}
