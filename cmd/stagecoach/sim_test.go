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

// Every schedule in one comparison simulates the same model: interleaved
// splits the same layers into more, smaller stages, and so beats GPipe.
func TestSimComparesSchedulesOnTheSameModel(t *testing.T) {
	out, errOut, code := runCLI(t, t.TempDir(), "sim", "--schedule", "gpipe,1f1b,interleaved,zb-h1", "--stages", "4", "--microbatches", "8", "--json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	var rows []struct {
		Schedule       string  `json:"schedule"`
		Layers         int     `json:"layers"`
		IterationTimeS float64 `json:"iteration_time_s"`
	}
	if err := json.Unmarshal([]byte(out), &rows); err != nil {
		t.Fatal(err)
	}
	times := map[string]float64{}
	for _, r := range rows {
		if r.Layers != 8 {
			t.Errorf("%s simulates %d layers, want 8 (4 ranks x 2 chunks for every schedule)", r.Schedule, r.Layers)
		}
		times[r.Schedule] = r.IterationTimeS
	}
	if times["interleaved"] >= times["gpipe"] {
		t.Errorf("interleaved %v s not below gpipe %v s on the same model", times["interleaved"], times["gpipe"])
	}
	// Alone, a schedule keeps one layer per stage.
	out, _, _ = runCLI(t, t.TempDir(), "sim", "--schedule", "gpipe", "--stages", "4", "--json")
	if !strings.Contains(out, `"layers": 4`) {
		t.Errorf("gpipe alone: want 4 layers:\n%s", out)
	}
}

// A schedule that does not fit the memory limit is a row of the table,
// marked infeasible with the validator's reason; the others still print.
func TestSimMarksInfeasibleSchedules(t *testing.T) {
	dir := t.TempDir()
	out, errOut, code := runCLI(t, dir, "sim", "--schedule", "gpipe,1f1b", "--stages", "4", "--microbatches", "8", "--memory", "4")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	if !regexp.MustCompile(`(?m)^gpipe .* - .*$`).MatchString(out) || !strings.Contains(out, "gpipe: infeasible: invalid plan: worker 0") {
		t.Errorf("gpipe not marked infeasible:\n%s", out)
	}
	if !regexp.MustCompile(`(?m)^1f1b\s+4\s+4\s+4\s+8\s+33\.0000\s`).MatchString(out) {
		t.Errorf("1f1b row missing or wrong:\n%s", out)
	}
	_, errOut, code = runCLI(t, dir, "sim", "--schedule", "gpipe,1f1b", "--stages", "4", "--microbatches", "8", "--memory", "2")
	if code != 2 || !strings.Contains(errOut, "no schedule can run: gpipe: invalid plan") || !strings.Contains(errOut, "; 1f1b: invalid plan") {
		t.Errorf("nothing fits: exit %d, stderr %q", code, errOut)
	}
}

// A schedule that refuses the shape asked for is a row too: --chunks 4
// suits interleaved, not 1f1b or a V schedule.
func TestSimMarksSchedulesRefusingTheShape(t *testing.T) {
	out, errOut, code := runCLI(t, t.TempDir(), "sim", "--schedule", "1f1b,interleaved,zb-v", "--stages", "4", "--microbatches", "8", "--chunks", "4")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	for _, want := range []string{"1f1b: infeasible: 1f1b: chunks is 4", "zb-v: infeasible: zb-v: chunks is 4"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if !regexp.MustCompile(`(?m)^interleaved\s+4\s+16\s+16\s+8\s+\d`).MatchString(out) {
		t.Errorf("interleaved row missing:\n%s", out)
	}
	_, errOut, code = runCLI(t, t.TempDir(), "sim", "--schedule", "1f1b", "--chunks", "3")
	if code != 2 || !strings.Contains(errOut, "1f1b: chunks is 3, the schedule holds one stage per worker") {
		t.Errorf("1f1b alone with --chunks 3: exit %d, stderr %q", code, errOut)
	}
}

func TestSimRefusesFlagsAPlanFileOverrides(t *testing.T) {
	dir := t.TempDir()
	out, errOut, code := runCLI(t, dir, "plan", "--schedule", "1f1b", "--stages", "2", "--microbatches", "2")
	if code != 0 {
		t.Fatalf("plan: exit %d: %s", code, errOut)
	}
	plan := filepath.Join(dir, "p.json")
	if err := os.WriteFile(plan, []byte(out), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, flag := range []string{"--schedule=zb-h1", "--stages=8", "--memory=1", "--sweep"} {
		_, errOut, code := runCLI(t, dir, "sim", "--plan", plan, flag)
		name := strings.TrimPrefix(strings.SplitN(flag, "=", 2)[0], "--")
		if code != 2 || !strings.Contains(errOut, "--"+name+" conflicts with --plan") {
			t.Errorf("%s beside --plan: exit %d, stderr %q", flag, code, errOut)
		}
	}
	if _, errOut, code := runCLI(t, dir, "sim", "--plan", plan); code != 0 {
		t.Errorf("--plan alone: exit %d: %s", code, errOut)
	}
}

func TestSimClusterTypoNamesFileLineAndKey(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "c.yaml")
	yaml := "name: x\nnodes: [{name: a, region: r1}, {name: b, region: r2}]\nlinks:\n  - {a: r1, b: r2, latency_ms: 1, bandwith_gib_s: 1}\n"
	if err := os.WriteFile(path, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	_, errOut, code := runCLI(t, dir, "sim", "--cluster", path)
	want := path + `: line 4: unknown key "bandwith_gib_s" in links[0] (did you mean "bandwidth_gib_s"?)`
	if code != 2 || strings.TrimSpace(errOut) != "stagecoach: "+want {
		t.Errorf("exit %d, stderr %q, want the one line %q", code, errOut, want)
	}
}

func TestSimGanttOfSeveralSchedulesSaysWhereItWrote(t *testing.T) {
	dir := t.TempDir()
	_, errOut, code := runCLI(t, dir, "sim", "--schedule", "gpipe,1f1b", "--stages", "2", "--microbatches", "2", "--gantt", "g.png")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	for _, f := range []string{"g-gpipe.png", "g-1f1b.png"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil || !strings.Contains(errOut, f) {
			t.Errorf("%s: %v; stderr %q", f, err, errOut)
		}
	}
}

// Memory in bytes: a 24-layer model of width 1024 (context 1024, vocab
// 50304, AdamW) in microbatches of 4 sequences over 4 stages of 20 GiB.
// GPipe holds all 8 microbatches (27.0 GiB of activations on stage 0) and
// does not fit; 1F1B holds 4 there (16.0 GiB with the 2.4 GiB of
// parameters, gradients, contribution buffers and moments and 0.16 GiB of
// workspace) and does. Both rows print, the
// memory plots are written, and `plan` refuses the same GPipe plan.
func TestSimMemoryCapacityInBytes(t *testing.T) {
	dir := t.TempDir()
	model := []string{"--stages", "4", "--microbatches", "8", "--layers", "24", "--dim", "1024", "--heads", "16", "--ctx", "1024", "--vocab", "50304", "--samples", "4", "--memory-gib", "20"}
	out, errOut, code := runCLI(t, dir, append([]string{"sim", "--schedule", "gpipe,1f1b", "--memory-plot", "mem.png"}, model...)...)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	if !regexp.MustCompile(`(?m)^gpipe\s+4\s+4\s+24\s+8\s+-\s.*\s31\.9 GiB\s+-\s+\S+$`).MatchString(out) ||
		!strings.Contains(out, "gpipe: infeasible: worker 0 needs 29.5 GiB at t=168 s, node node-0 has 20.0 GiB") {
		t.Errorf("gpipe not marked infeasible in bytes:\n%s", out)
	}
	if !regexp.MustCompile(`(?m)^1f1b\s+4\s+4\s+24\s+8\s+\d+\.\d{4}\s.*\s16\.0 GiB\s`).MatchString(out) || strings.Contains(out, "1f1b: infeasible") {
		t.Errorf("1f1b should fit:\n%s", out)
	}
	for _, f := range []string{"mem-gpipe.png", "mem-1f1b.png"} {
		if st, err := os.Stat(filepath.Join(dir, f)); err != nil || st.Size() == 0 || !strings.Contains(errOut, f) {
			t.Errorf("%s: %v; stderr %q", f, err, errOut)
		}
	}
	out, errOut, code = runCLI(t, dir, append([]string{"sim", "--schedule", "1f1b", "--json"}, model...)...)
	var rows []map[string]any
	if code != 0 || json.Unmarshal([]byte(out), &rows) != nil || len(rows) != 1 {
		t.Fatalf("exit %d: %s\n%s", code, errOut, out)
	}
	if pb, _ := rows[0]["peak_bytes"].(float64); math.Abs(pb/(1<<30)-16.046) > 0.001 {
		t.Errorf("peak_bytes %v, want about 16.046 GiB", rows[0]["peak_bytes"])
	}
	_, errOut, code = runCLI(t, dir, append([]string{"plan", "--schedule", "gpipe"}, model...)...)
	if code != 2 || !strings.Contains(errOut, "invalid plan: worker 0 action F5@s0: memory: needs 22.8 GiB at action 5 of its program, 2.80 GiB over its 20.0 GiB") {
		t.Errorf("plan gpipe: exit %d, stderr %q", code, errOut)
	}
	if _, errOut, code = runCLI(t, dir, append([]string{"plan", "--schedule", "1f1b"}, model...)...); code != 0 {
		t.Errorf("plan 1f1b: exit %d: %s", code, errOut)
	}
	_, errOut, code = runCLI(t, dir, "sim", "--optimizer", "adam")
	if code != 2 || !strings.Contains(errOut, `--optimizer: unknown optimizer "adam" (want adamw, lamb or sgd)`) {
		t.Errorf("--optimizer adam: exit %d, stderr %q", code, errOut)
	}
}

// The sweep's CSV carries each point's peak bytes; a point over the
// node's memory is an infeasible row that still says what it would need.
func TestSimSweepPeakBytes(t *testing.T) {
	dir := t.TempDir()
	_, errOut, code := runCLI(t, dir, "sim", "--sweep", "--schedule", "gpipe,1f1b", "--sweep-stages", "2", "--sweep-microbatches", "2,8", "--out", dir, "--memory-gib", "0.008")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	data, err := os.ReadFile(filepath.Join(dir, "sweep.csv"))
	if err != nil {
		t.Fatal(err)
	}
	// Default model, one block per stage, 721,408 bytes per microbatch
	// (721,664 on stage 0, with the token ids): stage 0 holds 4,756,480
	// bytes of parameters, gradients, contribution buffers and moments and
	// 344,064 of workspace (1F1B's peak with two microbatches), the last
	// stage 4,595,200, 475,392 of workspace and 131,072 of logits while a
	// loss runs (GPipe's peak).
	want := "schedule,stages,microbatches,iteration_time_s,bubble_fraction,bubble_over_ideal,span_s,peak_activations,peak_bytes\n" +
		"gpipe,2,2,9,0.3333333333,0.5,9,2,6644480\n" +
		"gpipe,2,8,infeasible,,,,,10972928\n" +
		"1f1b,2,2,9,0.3333333333,0.5,9,2,6543872\n" +
		"1f1b,2,8,27,0.1111111111,0.125,27,2,6543872\n"
	if string(data) != want {
		t.Errorf("sweep.csv:\n%s\nwant:\n%s", data, want)
	}
	if !strings.Contains(errOut, "infeasible under the memory limits (left out of the plot): gpipe p=2 m=8") {
		t.Errorf("stderr %q", errOut)
	}
}
