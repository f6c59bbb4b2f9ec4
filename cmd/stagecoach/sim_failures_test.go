package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

type failureRow struct {
	Schedule   string  `json:"schedule"`
	Every      int     `json:"checkpoint_every"`
	Goodput    float64 `json:"goodput_samples_per_hour"`
	Committed  int     `json:"committed_steps"`
	Lost       int     `json:"iterations_lost"`
	Replayed   int     `json:"steps_replayed"`
	Recoveries []struct {
		Action string `json:"action"`
	} `json:"recoveries"`
}

func runFailures(t *testing.T, dir string, args ...string) []failureRow {
	t.Helper()
	out, errOut, code := runCLI(t, dir, append([]string{"sim", "--json"}, args...)...)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	var rows []failureRow
	if err := json.Unmarshal([]byte(out), &rows); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	return rows
}

// A crash during a GPipe run restores from the last checkpoint and
// replays: the longer the checkpoint interval, the more is replayed; the
// plot is written.
func TestSimFailuresClassic(t *testing.T) {
	dir := t.TempDir()
	trace := filepath.Join(dir, "trace.yaml")
	if err := os.WriteFile(trace, []byte("events:\n  - {at: 37m, node: node-05, kind: crash}\n  - {at: 2h, node: node-05, kind: rejoin}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	plot := filepath.Join(dir, "f.png")
	rows := runFailures(t, dir, "--schedule", "gpipe", "--stages", "4", "--replicas", "2", "--microbatches", "8",
		"--failures", trace, "--horizon", "4h", "--checkpoint-every", "1,50", "--failures-plot", plot)
	if len(rows) != 2 {
		t.Fatalf("%d rows, want 2", len(rows))
	}
	for _, r := range rows {
		if r.Lost != 1 || len(r.Recoveries) < 2 || r.Recoveries[0].Action != "restore" || r.Recoveries[1].Action != "rejoin" {
			t.Fatalf("row %+v: want one lost iteration, a restore, then a rejoin", r)
		}
	}
	if rows[0].Replayed != 0 || rows[1].Replayed == 0 {
		t.Fatalf("replayed %d (every step) and %d (every 50): want 0 and more", rows[0].Replayed, rows[1].Replayed)
	}
	if _, err := os.Stat(plot); err != nil {
		t.Fatal(err)
	}
	// The same run drawn from an MTBF is reproducible by its seed.
	a := runFailures(t, dir, "--schedule", "gpipe", "--stages", "4", "--microbatches", "8", "--mtbf", "2h", "--horizon", "24h", "--seed", "3")
	b := runFailures(t, dir, "--schedule", "gpipe", "--stages", "4", "--microbatches", "8", "--mtbf", "2h", "--horizon", "24h", "--seed", "3")
	if a[0].Goodput != b[0].Goodput || a[0].Lost == 0 {
		t.Fatalf("mtbf runs: goodput %v and %v, lost %d", a[0].Goodput, b[0].Goodput, a[0].Lost)
	}
	_, errOut, code := runCLI(t, dir, "sim", "--failures", filepath.Join(dir, "nope.yaml"))
	if code != 2 || !strings.Contains(errOut, "nope.yaml") {
		t.Fatalf("missing trace: exit %d: %s", code, errOut)
	}
}

// SkipPipe re-paths a crash outside stage 0 on the survivors, with nothing
// replayed.
func TestSimFailuresSkipPipeRepaths(t *testing.T) {
	if testing.Short() {
		t.Skip("plans SkipPipe several times")
	}
	dir := t.TempDir()
	trace := filepath.Join(dir, "trace.yaml")
	if err := os.WriteFile(trace, []byte("events:\n  - {at: 3m, node: n18, kind: crash}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	rows := runFailures(t, dir, "--preset", "skippipe-geo", "--schedule", "skippipe", "--failures", trace, "--horizon", "10m", "--checkpoint-every", "10")
	if len(rows) != 1 || len(rows[0].Recoveries) != 1 || rows[0].Recoveries[0].Action != "repath" || rows[0].Replayed != 0 {
		t.Fatalf("rows %+v: want one re-path and nothing replayed", rows)
	}
}
