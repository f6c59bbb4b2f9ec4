package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"stagecoach/internal/failpoint"
)

// A worker's backend process dies (SIGKILL), hangs (SIGSTOP, caught by
// --backend-timeout) or answers a Forward with an output of the wrong
// shape (a failpoint in compute-serve) in the middle of a run through the
// compute protocol: the worker fails its iteration naming the backend,
// the coordinator recovers as from a lost worker (restore from the last
// checkpoint on the remaining replica), and the job ends with the
// single-process run's losses, bit for bit: nothing was committed wrong.
func TestBackendFailuresAreLostWorkers(t *testing.T) {
	if testing.Short() {
		t.Skip("starts worker and backend processes")
	}
	corpus := upCorpus(t)
	model := tinyModel(corpus, 8, 2, 4)
	dir := t.TempDir()
	want := trainLosses(t, dir, model)
	// wrongShape stands for the failpoint's case.
	const wrongShape = syscall.Signal(0)
	for _, sig := range []syscall.Signal{syscall.SIGKILL, syscall.SIGSTOP, wrongShape} {
		name := sig.String()
		if sig == wrongShape {
			name = "wrong shape"
		}
		t.Run(name, func(t *testing.T) {
			run := filepath.Join(dir, "up-"+strings.ReplaceAll(name, " ", "-"))
			if err := os.MkdirAll(run, 0o755); err != nil {
				t.Fatal(err)
			}
			args := append([]string{"up", "--workers", "4", "--stages", "2", "--schedule", "gpipe", "--ttl", "2", "--out", filepath.Join(run, "out"),
				"--checkpoint-every", "2", "--backend-cmd", "'" + selfExe(t) + "' compute-serve", "--backend-timeout", "3s"}, model...)
			up := exec.Command(selfExe(t), args...)
			up.Env = append(os.Environ(), "STAGECOACH_TEST_MAIN=1")
			lied := filepath.Join(run, "lied")
			if sig == wrongShape {
				// One backend (the first to get there) answers its ninth
				// Forward, in step 5 or so, one sequence short.
				up.Env = append(up.Env, failpoint.EnvVar+"="+failpoint.ComputeWrongShape+"=9:"+lied)
			}
			stdout, err := os.Create(filepath.Join(run, "stdout"))
			if err != nil {
				t.Fatal(err)
			}
			defer stdout.Close()
			logPath := filepath.Join(run, "up.log")
			logf, err := os.Create(logPath)
			if err != nil {
				t.Fatal(err)
			}
			defer logf.Close()
			up.Stdout, up.Stderr = stdout, logf
			if err := up.Start(); err != nil {
				t.Fatal(err)
			}
			var victim int
			t.Cleanup(func() {
				if victim > 0 {
					_ = syscall.Kill(victim, syscall.SIGKILL)
				}
				_ = up.Process.Kill()
				_ = up.Wait()
			})
			if sig != wrongShape {
				killBackend(t, filepath.Join(run, "stdout"), up.Process.Pid, sig, &victim)
			}
			if err := up.Wait(); err != nil {
				b, _ := os.ReadFile(logPath)
				t.Fatalf("up: %v\n%s", err, b)
			}
			if _, err := os.Stat(lied); sig == wrongShape && err != nil {
				t.Fatalf("no backend answered with the wrong shape: %v", err)
			}
			out, _ := os.ReadFile(filepath.Join(run, "stdout"))
			sameLosses(t, "up after the backend's "+name, jsonLosses(t, string(out)), want)
			log, _ := os.ReadFile(logPath)
			if !strings.Contains(string(log), "recovered from the failure of step") || !strings.Contains(string(log), "backend") {
				t.Fatalf("no recovery naming the backend in up's log:\n%s", log)
			}
			if sig == wrongShape && !strings.Contains(string(log), "shape") {
				t.Fatalf("no error naming the wrong shape in up's log:\n%s", log)
			}
		})
	}
}

// killBackend waits for step 3 of the run in stdout, then sends sig to a
// backend process under up's workers, recording it in victim.
func killBackend(t *testing.T, stdout string, upPid int, sig syscall.Signal, victim *int) {
	t.Helper()
	waitLog(t, stdout, `"step":3`)
	// up's children are the workers; theirs, the backends.
	for _, w := range childrenOf(upPid) {
		if bs := childrenOf(w); len(bs) > 0 && *victim == 0 {
			*victim = bs[0]
		}
	}
	if *victim == 0 {
		t.Fatal("found no backend process under the workers")
	}
	if err := syscall.Kill(*victim, sig); err != nil {
		t.Fatal(err)
	}
}
