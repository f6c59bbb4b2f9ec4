package main

import (
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"stagecoach/internal/failpoint"
	stmodel "stagecoach/model"
	"stagecoach/model/train"
	"stagecoach/worker"
)

// evalJSON runs `stagecoach eval --json` on ckpt over corpus and returns
// its validation loss and what the checkpoint was verified against.
func evalJSON(t *testing.T, dir, ckpt, corpus string) (float64, string) {
	t.Helper()
	out, errOut, code := runCLI(t, dir, "eval", "--checkpoint", ckpt, "--corpus", corpus, "--windows", "16", "--json")
	if code != 0 {
		t.Fatalf("eval %s exited %d: %s", ckpt, code, errOut)
	}
	var r struct {
		ValLoss  float64 `json:"val_loss"`
		Verified string  `json:"verified"`
	}
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("eval output %q: %v", out, err)
	}
	return r.ValLoss, r.Verified
}

// TestUpInitFromTrainContinues stops `stagecoach train` at step 3 of 6,
// starts `up --init-from` that checkpoint (real worker processes, etcd
// and gRPC) and checks that its steps 4..6 have train's losses of an
// uninterrupted 6-step run bit for bit (GPipe over the same microbatch
// split is exact); that eval of up's shard set, of its export and of
// train's own final checkpoint give the same loss, bit for bit; and that
// a second up into the same --out is refused unless --force, which
// clears only the run's own files.
func TestUpInitFromTrainContinues(t *testing.T) {
	if testing.Short() {
		t.Skip("starts worker processes")
	}
	corpus := upCorpus(t)
	model := tinyModel(corpus, 6, 2, 2)
	dir := t.TempDir()
	want := trainLosses(t, dir, model)
	half := filepath.Join(dir, "half")
	if _, errOut, code := runCLI(t, dir, append([]string{"train", "--out", half, "--stop-at", "3"}, model...)...); code != 0 {
		t.Fatalf("train --stop-at 3 exited %d: %s", code, errOut)
	}

	runDir := filepath.Join(dir, "up")
	up := append([]string{"up", "--workers", "2", "--ttl", "2", "--out", runDir, "--init-from", half}, model...)
	out, errOut, code := runCLI(t, dir, up...)
	if code != 0 {
		t.Fatalf("up --init-from exited %d: %s", code, errOut)
	}
	got := stepLosses(t, out)
	if len(got) != 3 {
		t.Fatalf("up --init-from of step 3 ran steps %v, want 4..6", got)
	}
	for step := 4; step <= 6; step++ {
		if math.Float64bits(got[step]) != math.Float64bits(want[step-1]) {
			t.Fatalf("step %d: up --init-from loss %v, train's %v (all: %v vs %v)", step, got[step], want[step-1], got, want)
		}
	}

	// The job's last checkpoint is a shard set: eval reads it, verified
	// against the manifest the coordinator wrote, and its export.
	shards := worker.StepDir(filepath.Join(runDir, "checkpoints"), 6)
	lossShards, verified := evalJSON(t, dir, shards, corpus)
	if verified != stmodel.ManifestFile {
		t.Errorf("eval of %s verified against %q, want %s", shards, verified, stmodel.ManifestFile)
	}
	lossTrain, _ := evalJSON(t, dir, filepath.Join(dir, "train"), corpus)
	exported := filepath.Join(dir, "export", "model.safetensors")
	os.MkdirAll(filepath.Dir(exported), 0o755)
	if _, errOut, code := runCLI(t, dir, "export", "--checkpoint", shards, "--out", exported, "--with-optimizer"); code != 0 {
		t.Fatalf("export exited %d: %s", code, errOut)
	}
	lossExport, verified := evalJSON(t, dir, exported, corpus)
	if verified != stmodel.SumsFile {
		t.Errorf("eval of the export verified against %q", verified)
	}
	if math.Float64bits(lossShards) != math.Float64bits(lossExport) || math.Float64bits(lossShards) != math.Float64bits(lossTrain) {
		t.Fatalf("eval: shard set %v, its export %v, train's checkpoint %v: not bit for bit", lossShards, lossExport, lossTrain)
	}

	// The model flags must match the checkpoint's.
	_, errOut, code = runCLI(t, dir, append(append([]string{}, up...), "--layers", "3", "--out", filepath.Join(dir, "other"))...)
	if code != 2 || !strings.Contains(errOut, "layers 2≠3") {
		t.Errorf("--init-from with another model: exit %d, %s", code, errOut)
	}

	// A second run into the same --out is refused; --force clears the
	// first run's step directories but not a file it does not know.
	_, errOut, code = runCLI(t, dir, up...)
	if code != 2 || !strings.Contains(errOut, runDir) || !strings.Contains(errOut, "--force") {
		t.Fatalf("a second up into %s: exit %d, %s", runDir, code, errOut)
	}
	mine := filepath.Join(runDir, "checkpoints", "notes.txt")
	if err := os.WriteFile(mine, []byte("keep"), 0o644); err != nil {
		t.Fatal(err)
	}
	short := append([]string{"up", "--workers", "2", "--ttl", "2", "--out", runDir, "--force"}, tinyModel(corpus, 1, 2, 2)...)
	if _, errOut, code := runCLI(t, dir, short...); code != 0 {
		t.Fatalf("up --force exited %d: %s", code, errOut)
	}
	if _, err := os.Stat(shards); !os.IsNotExist(err) {
		t.Errorf("up --force left the earlier run's %s: %v", shards, err)
	}
	if _, err := os.Stat(worker.StepDir(filepath.Join(runDir, "checkpoints"), 1)); err != nil {
		t.Errorf("up --force wrote no checkpoint of its own: %v", err)
	}
	if b, err := os.ReadFile(mine); err != nil || string(b) != "keep" {
		t.Errorf("up --force removed a file it does not own: %v", err)
	}
}

// TestUpResumeOfInitFromJob crashes an `up --init-from` job (started
// from train's step 2) while it writes the checkpoint of step 6, then
// runs `up --resume` without --init-from: it takes the initial checkpoint
// from up.json, restores step 4, replays step 5 and finishes; the losses
// of both runs are train's, bit for bit.
func TestUpResumeOfInitFromJob(t *testing.T) {
	if testing.Short() {
		t.Skip("starts worker processes")
	}
	corpus := upCorpus(t)
	model := tinyModel(corpus, 8, 2, 2)
	dir := t.TempDir()
	want := trainLosses(t, dir, model)
	half := filepath.Join(dir, "half")
	if _, errOut, code := runCLI(t, dir, append([]string{"train", "--out", half, "--stop-at", "2"}, model...)...); code != 0 {
		t.Fatalf("train --stop-at 2 exited %d: %s", code, errOut)
	}
	runDir := filepath.Join(dir, "up")
	up := append([]string{"up", "--workers", "2", "--ttl", "2", "--out", runDir, "--checkpoint-every", "2"}, model...)
	t.Setenv(failpoint.EnvVar, failpoint.CheckpointWrite+"=6")
	out1, errOut, code := runCLI(t, dir, append(append([]string{}, up...), "--init-from", half)...)
	if code == 0 {
		t.Fatalf("up survived its workers' crash at step 6: %s", errOut)
	}
	t.Setenv(failpoint.EnvVar, "")
	got := stepLosses(t, out1)
	if len(got) != 3 {
		t.Fatalf("the crashed run committed steps %v, want 3..5", got)
	}
	out2, errOut, code := runCLI(t, dir, append(up, "--resume")...)
	if code != 0 {
		t.Fatalf("up --resume exited %d: %s", code, errOut)
	}
	if !strings.Contains(errOut, "resuming a job started from") {
		t.Errorf("up --resume does not say it resumes a job started from a checkpoint:\n%s", errOut)
	}
	for step, l := range stepLosses(t, out2) {
		got[step] = l
	}
	if len(got) != 6 {
		t.Fatalf("the runs printed steps %v, want 3..8", got)
	}
	for step := 3; step <= 8; step++ {
		if math.Float64bits(got[step]) != math.Float64bits(want[step-1]) {
			t.Fatalf("step %d: loss %v, train's %v", step, got[step], want[step-1])
		}
	}
}

// TestUpInitWeightsOnly starts `up --init-from --init-weights-only` from
// a train checkpoint of step 3 and checks its losses against the
// single-process trainer given the same weights, fresh optimizer moments
// and the sampler from the start, bit for bit.
func TestUpInitWeightsOnly(t *testing.T) {
	if testing.Short() {
		t.Skip("starts worker processes")
	}
	corpus := upCorpus(t)
	dir := t.TempDir()
	half := filepath.Join(dir, "half")
	if _, errOut, code := runCLI(t, dir, append([]string{"train", "--out", half, "--stop-at", "3"}, tinyModel(corpus, 6, 2, 2)...)...); code != 0 {
		t.Fatalf("train --stop-at 3 exited %d: %s", code, errOut)
	}
	model := tinyModel(corpus, 3, 2, 2)
	out, errOut, code := runCLI(t, dir, append([]string{"up", "--workers", "2", "--ttl", "2", "--out", filepath.Join(dir, "up"),
		"--init-from", half, "--init-weights-only"}, model...)...)
	if code != 0 {
		t.Fatalf("up --init-weights-only exited %d: %s", code, errOut)
	}
	got := jsonLosses(t, out)

	// The reference: the trainer with half's weights and nothing else.
	o := train.Options{Train: stmodel.TrainConfig{Model: stmodel.Config{Layers: 2, Dim: 16, Heads: 2, Ctx: 16, Seed: 3},
		Microbatches: 2, MicrobatchSize: 2, Optim: stmodel.OptimConfig{Kind: "adamw"}}, Steps: 3, CorpusDir: corpus,
		OutDir: filepath.Join(dir, "ref"), EvalWindows: 8}
	s, err := train.Prepare(o)
	if err != nil {
		t.Fatal(err)
	}
	ck, err := stmodel.OpenCheckpoint(half)
	if err != nil {
		t.Fatal(err)
	}
	if err := ck.Fill(s.Trainer.States(), false); err != nil {
		t.Fatal(err)
	}
	var want []float64
	if _, err := s.Run(func(ev train.Event) { want = append(want, ev.Loss) }); err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Fatalf("up ran %d steps, the reference %d", len(got), len(want))
	}
	for i := range want {
		if math.Float64bits(got[i]) != math.Float64bits(want[i]) {
			t.Fatalf("losses differ:\n up  %v\n ref %v", got, want)
		}
	}
}
