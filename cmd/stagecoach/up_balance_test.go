package main

import (
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestUpBalanceMatchesTrain runs `stagecoach up --balance` with real
// worker processes on a cluster whose node n1 runs at half speed
// (emulated, --emulate-speed): the plan gives n1 fewer layers, and the
// losses are `stagecoach train`'s bit for bit.
func TestUpBalanceMatchesTrain(t *testing.T) {
	if testing.Short() {
		t.Skip("starts worker processes")
	}
	corpus := upCorpus(t)
	model := tinyModel(corpus, 3, 6, 4)
	dir := t.TempDir()
	cluster := filepath.Join(dir, "half.yaml")
	const yaml = `name: half
compute: {layer_forward_s: 0.01, backward_ratio: 2, loss_layers: 1, activation_bytes_per_sample: 0, gradient_bytes_per_layer: 0}
nodes:
  - {name: n0, speed: 1}
  - {name: n1, speed: 0.5}
  - {name: n2, speed: 1}
`
	if err := os.WriteFile(cluster, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	want := trainLosses(t, dir, model)
	out, errOut, code := runCLI(t, dir, append([]string{"up", "--cluster", cluster, "--emulate-speed", "--balance", "--ttl", "2",
		"--out", filepath.Join(dir, "up")}, model...)...)
	if code != 0 {
		t.Fatalf("up exited %d: %s", code, errOut)
	}
	if !strings.Contains(errOut, "balance: layers per stage 2,2,2 -> ") {
		t.Errorf("up did not report a balanced split:\n%s", errOut)
	}
	log, err := os.ReadFile(filepath.Join(dir, "up", "workers", "n1.log"))
	if err != nil || !strings.Contains(string(log), "EMULATING a node at 0.5") {
		t.Errorf("worker n1 does not say it emulates half speed (%v):\n%s", err, log)
	}
	got := jsonLosses(t, out)
	if len(got) != len(want) {
		t.Fatalf("up printed %d steps, train %d", len(got), len(want))
	}
	for i := range want {
		if math.Float64bits(got[i]) != math.Float64bits(want[i]) {
			t.Fatalf("losses differ:\n up    %v\n train %v", got, want)
		}
	}
}
