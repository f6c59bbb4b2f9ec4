package main

import (
	"bytes"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

func TestSimJSONMatchesFormulas(t *testing.T) {
	out, errOut, code := runCLI(t, t.TempDir(), "sim", "--schedule", "gpipe,1f1b", "--stages", "4", "--microbatches", "8", "--json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	var rows []map[string]any
	if err := json.Unmarshal([]byte(out), &rows); err != nil {
		t.Fatalf("output is not a JSON array: %v\n%s", err, out)
	}
	if len(rows) != 2 {
		t.Fatalf("want 2 rows, got %d", len(rows))
	}
	wantPeak := map[string]float64{"gpipe": 8, "1f1b": 4}
	for _, r := range rows {
		name, _ := r["schedule"].(string)
		for _, k := range []string{"schedule", "iteration_time_s", "bubble_fraction", "peak_activations"} {
			if _, ok := r[k]; !ok {
				t.Fatalf("row %v lacks key %q", name, k)
			}
		}
		if bf := r["bubble_fraction"].(float64); math.Abs(bf-3.0/11) > 1e-9 {
			t.Errorf("%s: bubble_fraction %v, want 3/11", name, bf)
		}
		if it := r["iteration_time_s"].(float64); math.Abs(it-33) > 1e-9 {
			t.Errorf("%s: iteration_time_s %v, want 33", name, it)
		}
		if pk := r["peak_activations"].(float64); pk != wantPeak[name] {
			t.Errorf("%s: peak_activations %v, want %v", name, pk, wantPeak[name])
		}
	}
}

func TestSimBadInputExitsTwo(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing-link.yaml")
	if err := os.WriteFile(missing, []byte("name: x\nnodes: [{name: a, region: r1}, {name: b, region: r2}]\ncompute: {layer_forward_s: 1}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	negative := filepath.Join(dir, "negative.yaml")
	if err := os.WriteFile(negative, []byte("name: x\nany_node: true\ncompute: {layer_forward_s: -0.5}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	deadlock := filepath.Join(dir, "deadlock.json")
	if err := os.WriteFile(deadlock, []byte(deadlockPlanJSON), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"sim", "--schedule", "nosuch"}, `unknown schedule "nosuch"`},
		{[]string{"sim", "--stages", "0"}, "stages is 0"},
		{[]string{"sim", "--microbatches", "-3"}, "microbatches is -3"},
		{[]string{"sim", "--cluster", missing}, `no link between regions "r1" and "r2"`},
		{[]string{"sim", "--cluster", negative}, "compute.layer_forward_s is -0.5"},
		{[]string{"sim", "--plan", deadlock}, "deadlock"},
		{[]string{"sim", "--preset", "mars"}, `unknown preset "mars"`},
		{[]string{"sim", "--all-reduce", "tree"}, `all-reduce "tree"`},
		{[]string{"sim", "--no-such-flag"}, "unknown flag"},
		// Each flag within its own bound, their product refused before
		// anything is generated (it once grew to 6.9 GB).
		{[]string{"sim", "--stages", "4096", "--microbatches", "1048576"}, "over the limit of 4194304 (--max-actions"},
		{[]string{"sim", "--stages", "4096", "--microbatches", "4000"}, "--stages 4096 x --microbatches 4000"},
		{[]string{"sim", "--sweep", "--sweep-stages", "2,4096", "--sweep-microbatches", "4000", "--out", dir}, "--max-actions"},
		{[]string{"sim", "--max-actions", "0"}, "--max-actions is 0"},
	} {
		out, errOut, code := runCLI(t, dir, tc.args...)
		if code != 2 {
			t.Errorf("%v: exit %d, want 2 (stderr %q)", tc.args, code, errOut)
			continue
		}
		if strings.Count(strings.TrimSpace(errOut), "\n") != 0 || !strings.Contains(errOut, tc.want) {
			t.Errorf("%v: stderr %q, want one line containing %q", tc.args, errOut, tc.want)
		}
		if out != "" {
			t.Errorf("%v: printed %q on stdout", tc.args, out)
		}
		if strings.Contains(errOut, "panic") {
			t.Errorf("%v: panicked: %s", tc.args, errOut)
		}
	}
}

// TestSimDeterministic runs the same simulation twice, trace included,
// and compares the bytes.
func TestSimDeterministic(t *testing.T) {
	var outs, traces [2][]byte
	for i := range 2 {
		dir := t.TempDir()
		out, errOut, code := runCLI(t, dir, "sim", "--schedule", "gpipe,1f1b", "--stages", "3", "--microbatches", "5", "--replicas", "2", "--json", "--trace", "trace.json")
		if code != 0 {
			t.Fatalf("exit %d: %s", code, errOut)
		}
		tr, err := os.ReadFile(filepath.Join(dir, "trace.json"))
		if err != nil {
			t.Fatal(err)
		}
		// plan_time_s is a wall-clock measurement of planning; everything
		// else must repeat exactly.
		outs[i], traces[i] = planTimeRE.ReplaceAll([]byte(out), nil), tr
	}
	if !bytes.Equal(outs[0], outs[1]) {
		t.Error("JSON output differs between two identical runs")
	}
	if !bytes.Equal(traces[0], traces[1]) {
		t.Error("trace differs between two identical runs")
	}
}

var planTimeRE = regexp.MustCompile(`"plan_time_s": [0-9.e+-]+,?`)

// A 2-stage plan in which worker 0 waits for a gradient before sending
// the activation that would produce it.
const deadlockPlanJSON = `{
 "version": 1, "schedule": "hand", "iteration": 0, "epoch": 0,
 "stages": [{"first_layer": 0, "layers": 1}, {"first_layer": 1, "layers": 1}],
 "head_stage": 1,
 "workers": [{"node": "a", "stages": [0], "replica": 0}, {"node": "b", "stages": [1], "replica": 0}],
 "microbatches": [
  {"samples": 1, "path": [{"worker": 0, "stage": 0}, {"worker": 1, "stage": 1}], "loss_worker": 1},
  {"samples": 1, "path": [{"worker": 0, "stage": 0}, {"worker": 1, "stage": 1}], "loss_worker": 1}
 ],
 "programs": [
  [{"op": "F", "mb": 0, "stage": 0}, {"op": "B", "mb": 0, "stage": 0}, {"op": "F", "mb": 1, "stage": 0}, {"op": "B", "mb": 1, "stage": 0}, {"op": "S", "mb": -1, "stage": -1}],
  [{"op": "F", "mb": 1, "stage": 1}, {"op": "L", "mb": 1, "stage": 1}, {"op": "B", "mb": 1, "stage": 1}, {"op": "F", "mb": 0, "stage": 1}, {"op": "L", "mb": 0, "stage": 1}, {"op": "B", "mb": 0, "stage": 1}, {"op": "S", "mb": -1, "stage": -1}]
 ]
}`
