package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const halfSpeedCluster = `name: one-slow-node
compute:
  layer_forward_s: 0.01
  backward_ratio: 2
  loss_layers: 1
  activation_bytes_per_sample: 0
  gradient_bytes_per_layer: 0
nodes:
  - {name: n0, speed: 1}
  - {name: n1, speed: 0.5}
  - {name: n2, speed: 1}
  - {name: n3, speed: 1}
`

// --balance gives the half-speed node fewer layers, and the iteration is
// faster for every schedule; on equal nodes the even split stays.
func TestSimBalance(t *testing.T) {
	dir := t.TempDir()
	cluster := filepath.Join(dir, "half.yaml")
	if err := os.WriteFile(cluster, []byte(halfSpeedCluster), 0o644); err != nil {
		t.Fatal(err)
	}
	run := func(extra ...string) (map[string]float64, map[string][]int, string) {
		t.Helper()
		args := append([]string{"sim", "--schedule", "gpipe,1f1b,zb-h1", "--stages", "4", "--microbatches", "8", "--layers", "16", "--cluster", cluster, "--json"}, extra...)
		out, errOut, code := runCLI(t, dir, args...)
		if code != 0 {
			t.Fatalf("exit %d: %s", code, errOut)
		}
		var rows []struct {
			Schedule       string  `json:"schedule"`
			IterationTimeS float64 `json:"iteration_time_s"`
			Plan           struct {
				Stages []struct {
					Layers int `json:"layers"`
				} `json:"stages"`
			} `json:"plan"`
		}
		if err := json.Unmarshal([]byte(out), &rows); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		times, layers := map[string]float64{}, map[string][]int{}
		for _, r := range rows {
			times[r.Schedule] = r.IterationTimeS
			for _, s := range r.Plan.Stages {
				layers[r.Schedule] = append(layers[r.Schedule], s.Layers)
			}
		}
		return times, layers, errOut
	}
	even, _, _ := run()
	bal, layers, errOut := run("--balance")
	for name, v := range even {
		if !(bal[name] < v) {
			t.Errorf("%s: balanced %v s, not below the even split's %v s", name, bal[name], v)
		}
		if l := layers[name]; len(l) == 4 && !(l[1] < l[0] && l[1] < l[2]) {
			t.Errorf("%s: layers %v, want fewer on the half-speed stage 1", name, l)
		}
	}
	if !strings.Contains(errOut, "balance: gpipe: layers per stage") {
		t.Errorf("stderr does not report the split:\n%s", errOut)
	}
	// Equal nodes: nothing to gain, the even split is kept.
	_, errOut, code := runCLI(t, dir, "sim", "--schedule", "gpipe", "--stages", "4", "--layers", "8", "--balance")
	if code != 0 || !strings.Contains(errOut, "layers per stage 2,2,2,2") {
		t.Errorf("equal nodes (exit %d): want the even split:\n%s", code, errOut)
	}
}

// A calibration prices whole stages (stage_forward_s, here stage 1 twice
// the others): --balance prices both splits by the layer, the slow
// stage's time becoming its node's speed, and the row simulates the
// balanced plan with that model (not the old split's stage times).
func TestSimBalanceCalibrated(t *testing.T) {
	dir := t.TempDir()
	calib := filepath.Join(dir, "calibration.yaml")
	const yaml = `name: calibrated
compute:
  layer_forward_s: 0.01
  stage_forward_s: [0.02, 0.04, 0.02, 0.02]
  backward_ratio: 2
  activation_bytes_per_sample: 0
  gradient_bytes_per_layer: 0
nodes:
  - {name: n0, speed: 1}
  - {name: n1, speed: 1}
  - {name: n2, speed: 1}
  - {name: n3, speed: 1}
`
	if err := os.WriteFile(calib, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	times := map[bool]float64{}
	for _, balance := range []bool{false, true} {
		args := []string{"sim", "--schedule", "gpipe", "--stages", "4", "--microbatches", "8", "--layers", "8", "--cluster", calib, "--json"}
		if balance {
			args = append(args, "--balance")
		}
		out, errOut, code := runCLI(t, dir, args...)
		if code != 0 {
			t.Fatalf("exit %d: %s", code, errOut)
		}
		var rows []struct {
			IterationTimeS float64 `json:"iteration_time_s"`
		}
		if err := json.Unmarshal([]byte(out), &rows); err != nil || len(rows) != 1 {
			t.Fatalf("%v\n%s", err, out)
		}
		times[balance] = rows[0].IterationTimeS
		if balance && !strings.Contains(errOut, "layers per stage 3,1,2,2") && !strings.Contains(errOut, "layers per stage 2,1,3,2") && !strings.Contains(errOut, "layers per stage 2,1,2,3") {
			t.Errorf("want one layer on the slow stage 1:\n%s", errOut)
		}
	}
	if !(times[true] < times[false]) {
		t.Errorf("balanced %v s, not below the calibrated even split's %v s", times[true], times[false])
	}
}
