package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

type skipRow struct {
	Schedule       string  `json:"schedule"`
	IterationTimeS float64 `json:"iteration_time_s"`
	PipelineTimeS  float64 `json:"pipeline_time_s"`
	PlanTimeS      float64 `json:"plan_time_s"`
	Microbatches   int     `json:"microbatches"`
}

func decodeRows(t *testing.T, out string) map[string]skipRow {
	t.Helper()
	var rows []skipRow
	if err := json.Unmarshal([]byte(out), &rows); err != nil {
		t.Fatalf("output is not a JSON array: %v\n%s", err, out)
	}
	m := map[string]skipRow{}
	for _, r := range rows {
		m[r.Schedule] = r
	}
	return m
}

func TestSimSkipPipePreset(t *testing.T) {
	out, errOut, code := runCLI(t, t.TempDir(), "sim", "--preset", "skippipe-geo", "--schedule", "skippipe-full,skippipe,skippipe-random", "--json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	rows := decodeRows(t, out)
	for _, name := range []string{"skippipe-full", "skippipe", "skippipe-random"} {
		r, ok := rows[name]
		if !ok || r.IterationTimeS <= 0 || r.PlanTimeS <= 0 || r.Microbatches != 30 {
			t.Fatalf("%s: row %+v, want a positive iteration and plan time over 30 microbatches", name, r)
		}
	}
	if rows["skippipe"].IterationTimeS >= rows["skippipe-full"].IterationTimeS || rows["skippipe"].IterationTimeS > rows["skippipe-random"].IterationTimeS {
		t.Errorf("skippipe %.2f s, skippipe-full %.2f s, random %.2f s: want skippipe fastest", rows["skippipe"].IterationTimeS, rows["skippipe-full"].IterationTimeS, rows["skippipe-random"].IterationTimeS)
	}
}

// TestSimSkipPipeHalvesGPipe is the figure: on the authors' setting,
// SkipPipe's iteration is at least 50% below the full pipeline over the
// same placement and microbatches (skippipe-full, the searched, strong
// baseline). Planning time is reported, not asserted: machines are noisy.
// It is asked for by its old spelling beside skippipe, "gpipe", which
// still means it, with a note.
func TestSimSkipPipeHalvesGPipe(t *testing.T) {
	out, errOut, code := runCLI(t, t.TempDir(), "sim", "--preset", "skippipe-geo", "--schedule", "gpipe,skippipe", "--json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	if !strings.Contains(errOut, `write "skippipe-full"`) {
		t.Errorf("stderr %q: want a note that gpipe beside skippipe is spelled skippipe-full", errOut)
	}
	rows := decodeRows(t, out)
	sp, gp := rows["skippipe"], rows["skippipe-full"]
	if sp.IterationTimeS > 0.5*gp.IterationTimeS {
		t.Errorf("skippipe %.3f s vs gpipe %.3f s: %.1f%% below, want >= 50%%", sp.IterationTimeS, gp.IterationTimeS, 100*(1-sp.IterationTimeS/gp.IterationTimeS))
	}
	t.Logf("skippipe %.3f s (planned in %.2f s), gpipe %.3f s: %.1f%% below", sp.IterationTimeS, sp.PlanTimeS, gp.IterationTimeS, 100*(1-sp.IterationTimeS/gp.IterationTimeS))
}

const tinySkipFile = `{"partitions": [[0, 1], [2], [3]],
 "delays": [[0, 1, 0.5, 2], [1, 0, 2, 0.5], [0.5, 2, 0, 1], [2, 0.5, 1, 0]],
 "memory": 4, "ours-sends": 2, "ca-paths": {"0": {"0": 2, "2": 3}, "1": {"1": 3, "3": 2}}, "ca-expected-time": 10}`

func TestSimImportSkipPipe(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "tiny.json")
	if err := os.WriteFile(path, []byte(tinySkipFile), 0o644); err != nil {
		t.Fatal(err)
	}
	out, errOut, code := runCLI(t, dir, "sim", "--import-skippipe", path, "--forward-s", "0.5", "--json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	rows := decodeRows(t, out)
	for _, name := range []string{"ref-baseline", "ref-ca", "skippipe-full", "skippipe-full-greedy", "skippipe"} {
		if r, ok := rows[name]; !ok || r.IterationTimeS <= 0 {
			t.Errorf("%s: row %+v missing or empty", name, r)
		}
	}
	bad := filepath.Join(dir, "bad.json")
	if err := os.WriteFile(bad, []byte(strings.Replace(tinySkipFile, `"memory": 4`, `"memory": -1`, 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	_, errOut, code = runCLI(t, dir, "sim", "--import-skippipe", bad)
	if code != 2 || !strings.Contains(errOut, `"memory"`) {
		t.Errorf("malformed file: exit %d, stderr %q; want 2 naming \"memory\"", code, errOut)
	}
	_, _, code = runCLI(t, dir, "sim", "--import-skippipe", path, "--forward-s", "0")
	if code != 2 {
		t.Errorf("--forward-s 0: exit %d, want 2", code)
	}
}

// On the authors' published file, Stagecoach's skippipe is no slower than
// their collision-aware plan in our simulator.
func TestSimImportReferenceSkipPipeNoWorseThanRefCA(t *testing.T) {
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(wd, "..", "..", "..", "shared", "reference", "skippipe-geo-schedule.json")
	if _, err := os.Stat(path); err != nil {
		t.Skipf("reference schedule not available (%v): skipping", err)
	}
	out, errOut, code := runCLI(t, t.TempDir(), "sim", "--import-skippipe", path, "--forward-s", "0.44", "--json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	rows := decodeRows(t, out)
	if len(rows) < 6 {
		t.Fatalf("%d schedules, want at least 6", len(rows))
	}
	sp, ca := rows["skippipe"], rows["ref-ca"]
	if sp.IterationTimeS > ca.IterationTimeS+1e-9 || sp.PipelineTimeS > ca.PipelineTimeS+1e-9 {
		t.Errorf("skippipe %.3f s (pipeline %.3f), ref-ca %.3f s (pipeline %.3f): want no worse", sp.IterationTimeS, sp.PipelineTimeS, ca.IterationTimeS, ca.PipelineTimeS)
	}
}
