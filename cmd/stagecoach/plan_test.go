package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestPlanWriteCheckSimulate writes plans in both formats, checks them and
// simulates them: the CSV path must give the same iteration time as JSON.
func TestPlanWriteCheckSimulate(t *testing.T) {
	dir := t.TempDir()
	for _, f := range []struct{ format, file string }{{"json", "p.json"}, {"pytorch-csv", "p.csv"}} {
		out, errOut, code := runCLI(t, dir, "plan", "--schedule", "1f1b", "--stages", "3", "--microbatches", "6", "--format", f.format)
		if code != 0 {
			t.Fatalf("plan --format %s: exit %d: %s", f.format, code, errOut)
		}
		if err := os.WriteFile(filepath.Join(dir, f.file), []byte(out), 0o644); err != nil {
			t.Fatal(err)
		}
		out, errOut, code = runCLI(t, dir, "plan", "--check", f.file)
		if code != 0 || !strings.HasPrefix(out, "ok: ") {
			t.Fatalf("plan --check %s: exit %d, stdout %q, stderr %q", f.file, code, out, errOut)
		}
	}
	var times []string
	for _, file := range []string{"p.json", "p.csv"} {
		out, errOut, code := runCLI(t, dir, "sim", "--plan", file, "--json")
		if code != 0 {
			t.Fatalf("sim --plan %s: exit %d: %s", file, code, errOut)
		}
		i := strings.Index(out, `"iteration_time_s"`)
		if i < 0 {
			t.Fatalf("sim --plan %s: no iteration_time_s in %s", file, out)
		}
		times = append(times, strings.SplitN(out[i:], ",", 2)[0])
	}
	if times[0] != times[1] || !strings.Contains(times[0], "24") {
		t.Fatalf("JSON and CSV plans simulate to %v, want both 3(m+p-1) = 24", times)
	}
}

func TestPlanCheckRejectsBadFiles(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.csv")
	if err := os.WriteFile(bad, []byte("0F0,0B0\n1F0,1Q0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, errOut, code := runCLI(t, dir, "plan", "--check", bad)
	if code != 2 || strings.Count(strings.TrimSpace(errOut), "\n") != 0 || !strings.Contains(errOut, "1Q0") {
		t.Fatalf("plan --check bad.csv: exit %d, stderr %q; want status 2 and one line naming the token", code, errOut)
	}
}

// SkipPipe schedules are listed among the simulator's schedules but need
// a cluster: plan says so and where to go instead of "unknown schedule".
func TestPlanSaysWhereSkipPipeSchedulesAre(t *testing.T) {
	for _, name := range []string{"skippipe", "skippipe-nonca"} {
		_, errOut, code := runCLI(t, t.TempDir(), "plan", "--schedule", name)
		if code != 2 || strings.Contains(errOut, "unknown schedule") || !strings.Contains(errOut, "stagecoach sim --preset skippipe-geo --schedule "+name) {
			t.Errorf("plan --schedule %s: exit %d, stderr %q", name, code, errOut)
		}
	}
}
