package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// A worker's backend process dies (SIGKILL) or hangs (SIGSTOP, caught by
// --backend-timeout) in the middle of a run through the compute protocol:
// the worker fails its iteration naming the backend, the coordinator
// recovers as from a lost worker (restore from the last checkpoint on the
// remaining replica), and the job ends with the single-process run's
// losses, bit for bit: nothing was committed wrong.
func TestBackendDeathAndHangAreLostWorkers(t *testing.T) {
	if testing.Short() {
		t.Skip("starts worker and backend processes")
	}
	corpus := upCorpus(t)
	model := tinyModel(corpus, 8, 2, 4)
	dir := t.TempDir()
	want := trainLosses(t, dir, model)
	for _, sig := range []syscall.Signal{syscall.SIGKILL, syscall.SIGSTOP} {
		t.Run(sig.String(), func(t *testing.T) {
			run := filepath.Join(dir, "up-"+strings.ReplaceAll(sig.String(), " ", "-"))
			if err := os.MkdirAll(run, 0o755); err != nil {
				t.Fatal(err)
			}
			args := append([]string{"up", "--workers", "4", "--stages", "2", "--schedule", "gpipe", "--ttl", "2", "--out", filepath.Join(run, "out"),
				"--checkpoint-every", "2", "--backend-cmd", "'" + selfExe(t) + "' compute-serve", "--backend-timeout", "3s"}, model...)
			up := exec.Command(selfExe(t), args...)
			up.Env = append(os.Environ(), "STAGECOACH_TEST_MAIN=1")
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
			waitLog(t, filepath.Join(run, "stdout"), `"step":3`)
			// up's children are the workers; theirs, the backends.
			for _, w := range childrenOf(up.Process.Pid) {
				if bs := childrenOf(w); len(bs) > 0 && victim == 0 {
					victim = bs[0]
				}
			}
			if victim == 0 {
				t.Fatal("found no backend process under the workers")
			}
			if err := syscall.Kill(victim, sig); err != nil {
				t.Fatal(err)
			}
			if err := up.Wait(); err != nil {
				b, _ := os.ReadFile(logPath)
				t.Fatalf("up: %v\n%s", err, b)
			}
			out, _ := os.ReadFile(filepath.Join(run, "stdout"))
			sameLosses(t, "up after the backend's "+sig.String(), jsonLosses(t, string(out)), want)
			log, _ := os.ReadFile(logPath)
			if !strings.Contains(string(log), "recovered from the failure of step") || !strings.Contains(string(log), "backend") {
				t.Fatalf("no recovery naming the backend in up's log:\n%s", log)
			}
		})
	}
}
