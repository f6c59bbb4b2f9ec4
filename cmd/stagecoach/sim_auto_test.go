package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// `sim --schedule auto` is a row of the comparison, never slower than the
// named schedules beside it, says on stderr what it picked, and draws its
// Gantt chart.
func TestSimAutoRow(t *testing.T) {
	dir := t.TempDir()
	cluster := filepath.Join(dir, "wgrad.yaml")
	// A costly weight gradient: the list scheduler at these costs beats
	// the named schedules, made at unit costs.
	if err := os.WriteFile(cluster, []byte(`name: wgrad
any_node: true
compute:
  layer_forward_s: 1
  backward_ratio: 2.4
  input_grad_ratio: 0.8
  weight_grad_ratio: 1.6
  activation_bytes_per_sample: 0
  gradient_bytes_per_layer: 0
`), 0o644); err != nil {
		t.Fatal(err)
	}
	gantt := filepath.Join(dir, "g.png")
	out, errOut, code := runCLI(t, dir, "sim", "--schedule", "1f1b,zb-h1,zb-v,dualpipe-v,auto", "--stages", "4", "--microbatches", "4",
		"--cluster", cluster, "--json", "--gantt", gantt)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	var rows []struct {
		Schedule       string  `json:"schedule"`
		Layers         int     `json:"layers"`
		IterationTimeS float64 `json:"iteration_time_s"`
	}
	if err := json.Unmarshal([]byte(out), &rows); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	times := map[string]float64{}
	for _, r := range rows {
		times[r.Schedule] = r.IterationTimeS
		if r.Layers != 8 {
			t.Errorf("%s simulates %d layers, want 8", r.Schedule, r.Layers)
		}
	}
	a, ok := times["auto"]
	if !ok {
		t.Fatalf("no auto row:\n%s", out)
	}
	for name, v := range times {
		if name != "auto" && !(a < v) {
			t.Errorf("auto %v s is not faster than %s %v s", a, name, v)
		}
	}
	if !strings.Contains(errOut, "auto: list") || !strings.Contains(errOut, "best named schedule") {
		t.Errorf("stderr does not say what auto picked:\n%s", errOut)
	}
	if _, err := os.Stat(filepath.Join(dir, "g-auto.png")); err != nil {
		t.Errorf("no Gantt chart of the auto schedule: %v", err)
	}
}
