package main

import (
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestSplitCommand(t *testing.T) {
	for in, want := range map[string][]string{
		`python3 -m stagecoach_torch --model examples/torch/gpt.py`: {"python3", "-m", "stagecoach_torch", "--model", "examples/torch/gpt.py"},
		`a 'b c' "d \"e\" f" g\ h`:                                  {"a", "b c", `d "e" f`, "g h"},
		`  x  `:                                                     {"x"},
		`x''`:                                                       {"x"},
	} {
		got, err := splitCommand(in)
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Errorf("splitCommand(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{``, `   `, `a 'b`, `a "b`, `a \`} {
		if _, err := splitCommand(bad); err == nil {
			t.Errorf("splitCommand(%q) accepted", bad)
		}
	}
}

func FuzzSplitCommand(f *testing.F) {
	f.Add(`a 'b c' "d" e\ f`)
	f.Fuzz(func(t *testing.T, s string) {
		words, err := splitCommand(s)
		if err == nil && len(words) == 0 {
			t.Fatal("no words and no error")
		}
	})
}

// The compute protocol against a known-exact reference: `train` and `up`
// (GPipe and 1F1B) computing through `stagecoach compute-serve` backend
// processes print the built-in in-process run's losses, bit for bit.
func TestRemoteGoBackendMatchesTrain(t *testing.T) {
	if testing.Short() {
		t.Skip("starts worker and backend processes")
	}
	corpus := upCorpus(t)
	model := tinyModel(corpus, 3, 3, 4)
	dir := t.TempDir()
	want := trainLosses(t, dir, model)
	backend := "'" + selfExe(t) + "' compute-serve"
	check := func(name string, args ...string) {
		t.Helper()
		out, errOut, code := runCLI(t, dir, append(args, model...)...)
		if code != 0 {
			t.Fatalf("%s exited %d: %s", name, code, errOut)
		}
		sameLosses(t, name+" against train", jsonLosses(t, out), want)
	}
	check("train --backend-cmd", "train", "--out", filepath.Join(dir, "train-remote"), "--backend-cmd", backend)
	for _, sched := range []string{"gpipe", "1f1b"} {
		check("up "+sched, "up", "--workers", "3", "--schedule", sched, "--ttl", "2", "--out", filepath.Join(dir, "up-"+sched),
			"--backend-cmd", backend, "--backend", "go")
	}
	// A job requiring another backend is refused by every worker.
	_, errOut, code := runCLI(t, dir, append([]string{"up", "--workers", "2", "--ttl", "2", "--out", filepath.Join(dir, "up-wrong"),
		"--backend", "torch"}, model...)...)
	if code == 0 || !strings.Contains(errOut, "torch") {
		t.Fatalf("a job for the torch backend ran on go workers (exit %d): %s", code, errOut)
	}
}
