package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"stagecoach/model"
)

// TestTrainResumeAndEvalVerifyTheCheckpoint stops `stagecoach train` at
// step 2, flips one bit of its checkpoint, and checks that `train --resume`
// and `eval` refuse it, naming the SHA-256 mismatch, and accept it intact.
func TestTrainResumeAndEvalVerifyTheCheckpoint(t *testing.T) {
	corpus := upCorpus(t)
	dir := t.TempDir()
	ckpt := filepath.Join(dir, "run")
	args := []string{"train", "--steps", "4", "--seed", "3", "--layers", "2", "--dim", "16", "--heads", "2", "--ctx", "16",
		"--microbatches", "2", "--microbatch-size", "2", "--corpus", corpus, "--json", "--out", ckpt}
	if _, errOut, code := runCLI(t, dir, append(args, "--stop-at", "2")...); code != 0 {
		t.Fatalf("train --stop-at 2 exited %d: %s", code, errOut)
	}
	path := filepath.Join(ckpt, model.WholeModelFile)
	good, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	bad := append([]byte(nil), good...)
	bad[len(bad)-7] ^= 0x04
	if err := os.WriteFile(path, bad, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, cmd := range [][]string{append(args, "--resume", ckpt), {"eval", "--checkpoint", ckpt, "--corpus", corpus}} {
		_, errOut, code := runCLI(t, dir, cmd...)
		if code == 0 || !strings.Contains(errOut, "corrupt checkpoint") || !strings.Contains(errOut, "SHA256SUMS") {
			t.Errorf("%s on a flipped bit: exit %d, %s", cmd[0], code, errOut)
		}
	}
	if err := os.WriteFile(path, good, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, errOut, code := runCLI(t, dir, append(args, "--resume", ckpt)...); code != 0 {
		t.Fatalf("train --resume of the intact checkpoint exited %d: %s", code, errOut)
	}
}
