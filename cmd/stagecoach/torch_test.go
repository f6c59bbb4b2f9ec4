package main

import (
	"encoding/json"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// torchPython is the interpreter the PyTorch backend runs on: Debian's,
// which sees python3-torch, python3-grpcio and python3-protobuf (a pyenv
// python3 on PATH may not).
const torchPython = "/usr/bin/python3"

// torchBackend returns the --backend-cmd of the PyTorch backend with the
// given example model, and the environment that finds the package; it
// skips (or, with STAGECOACH_REQUIRE_TORCH=1, fails) without torch.
func torchBackend(t *testing.T, example string) (string, []string) {
	t.Helper()
	for _, mod := range []string{"torch", "grpc", "google.protobuf"} {
		if out, err := exec.Command(torchPython, "-c", "import "+mod).CombinedOutput(); err != nil {
			msg := torchPython + " cannot import " + mod + " (apt-get install python3-torch python3-grpcio python3-protobuf): " + strings.TrimSpace(string(out))
			if os.Getenv("STAGECOACH_REQUIRE_TORCH") == "1" {
				t.Fatal(msg)
			}
			t.Skip(msg)
		}
	}
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	cmd := torchPython + " -m stagecoach_torch --threads 1 --model '" + filepath.Join(root, "examples", "torch", example) + "'"
	return cmd, []string{"PYTHONPATH=" + filepath.Join(root, "backends", "torch")}
}

// runCLIEnv is runCLI with extra environment (set for the rest of the
// test: the workers `up` starts inherit it, and so do their backends).
func runCLIEnv(t *testing.T, dir string, env []string, args ...string) (string, string, int) {
	t.Helper()
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	return runCLI(t, dir, args...)
}

// `up` with the PyTorch backend prints the PyTorch single-process
// reference's losses (`train --backend-cmd`), bit for bit, for GPipe and
// 1F1B; SkipPipe with the PyTorch backend trains and its loss falls.
func TestUpWithTorchBackend(t *testing.T) {
	if testing.Short() {
		t.Skip("starts worker and PyTorch processes")
	}
	backend, env := torchBackend(t, "gpt.py")
	corpus := upCorpus(t)
	model := tinyModel(corpus, 3, 3, 4)
	dir := t.TempDir()
	out, errOut, code := runCLIEnv(t, dir, env, append([]string{"train", "--out", filepath.Join(dir, "train"), "--backend-cmd", backend}, model...)...)
	if code != 0 {
		t.Fatalf("train --backend-cmd exited %d: %s", code, errOut)
	}
	want := jsonLosses(t, out)
	for _, sched := range []string{"gpipe", "1f1b"} {
		out, errOut, code := runCLIEnv(t, dir, env, append([]string{"up", "--workers", "3", "--schedule", sched, "--ttl", "2",
			"--out", filepath.Join(dir, "up-"+sched), "--backend-cmd", backend, "--backend", "torch"}, model...)...)
		if code != 0 {
			t.Fatalf("up %s exited %d: %s", sched, code, errOut)
		}
		sameLosses(t, "up "+sched+" with torch against train with torch", jsonLosses(t, out), want)
	}
	// The torch backend's shards are ordinary Stagecoach checkpoints:
	// eval (the Go model) reads them, and export merges them.
	ckpts, err := filepath.Glob(filepath.Join(dir, "up-gpipe", "checkpoints", "step-*"))
	if err != nil || len(ckpts) == 0 {
		t.Fatalf("up gpipe with torch wrote no checkpoint (%v)", err)
	}
	last := ckpts[len(ckpts)-1]
	out, errOut, code = runCLI(t, dir, "eval", "--checkpoint", last, "--corpus", corpus, "--json")
	if code != 0 {
		t.Fatalf("eval of a torch checkpoint exited %d: %s", code, errOut)
	}
	var ev struct {
		ValLoss float64 `json:"val_loss"`
		Step    int     `json:"step"`
	}
	if err := json.Unmarshal([]byte(strings.TrimSpace(out)), &ev); err != nil {
		t.Fatalf("eval output %q: %v", out, err)
	}
	if ev.Step != len(want) || math.Abs(ev.ValLoss-want[len(want)-1]) > 0.5 {
		t.Fatalf("eval of the torch checkpoint: step %d val loss %v, want step %d near the last training loss %v", ev.Step, ev.ValLoss, len(want), want[len(want)-1])
	}
	if _, errOut, code := runCLI(t, dir, "export", "--checkpoint", last, "--out", filepath.Join(dir, "torch-export", "model.safetensors")); code != 0 {
		t.Fatalf("export of a torch checkpoint exited %d: %s", code, errOut)
	}
	// SkipPipe over 6 workers in 3 stages, paths skipping some stages.
	skipModel := tinyModel(corpus, 12, 3, 6)
	out, errOut, code = runCLIEnv(t, dir, env, append([]string{"up", "--workers", "6", "--stages", "3", "--schedule", "skippipe", "--ttl", "2",
		"--out", filepath.Join(dir, "up-skippipe"), "--backend-cmd", backend}, skipModel...)...)
	if code != 0 {
		t.Fatalf("up skippipe exited %d: %s", code, errOut)
	}
	losses := jsonLosses(t, out)
	if len(losses) != 12 || !(losses[len(losses)-1] < losses[0]) {
		t.Fatalf("skippipe with torch: losses %v, want 12 steps ending below the first", losses)
	}
}
