package main

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestCoordinatorLogsAndExitsCleanly runs `stagecoach coordinator` with
// real worker processes and etcd, its stderr a file (not a terminal): it
// logs a line per step and the stage map of its plan; a finished job's
// standby and a coordinator stopped by SIGTERM both exit 0, without
// "context canceled" in their logs.
func TestCoordinatorLogsAndExitsCleanly(t *testing.T) {
	if testing.Short() {
		t.Skip("starts worker processes")
	}
	dir := t.TempDir()
	_, ep := testEtcd(t, dir)
	exe := selfExe(t)
	corpus := upCorpus(t)
	for _, job := range []string{"done", "stopped"} {
		for _, name := range []string{"w0", "w1"} {
			w := exec.Command(exe, "worker", "--etcd", ep, "--job", job, "--name", name, "--ttl", "2",
				"--data-dir", filepath.Join(dir, job, name), "--checkpoint-root", filepath.Join(dir, job, "co"))
			w.Env = append(os.Environ(), "STAGECOACH_TEST_MAIN=1")
			if err := w.Start(); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				_ = w.Process.Kill()
				_ = w.Wait()
			})
		}
	}
	coordinator := func(job, steps string) *exec.Cmd {
		c := exec.Command(exe, "coordinator", "--etcd", ep, "--job", job, "--workers", "2", "--ttl", "2",
			"--steps", steps, "--seed", "3", "--layers", "2", "--dim", "16", "--heads", "2", "--ctx", "16",
			"--microbatches", "2", "--microbatch-size", "2", "--corpus", corpus, "--out", filepath.Join(dir, job, "co"))
		c.Env = append(os.Environ(), "STAGECOACH_TEST_MAIN=1")
		return c
	}
	exitCode := func(err error) int {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return ee.ExitCode()
		}
		if err != nil {
			t.Fatal(err)
		}
		return 0
	}

	out, err := coordinator("done", "3").CombinedOutput()
	if code := exitCode(err); code != 0 {
		t.Fatalf("coordinator exited %d:\n%s", code, out)
	}
	for _, want := range []string{"step 1/3 loss ", "step 3/3 loss ", "epoch 1 plan installed: stage 0: w0; stage 1: w1"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("the coordinator's log has no %q:\n%s", want, out)
		}
	}
	// A standby that wins once the job has finished: nothing to do.
	out, err = coordinator("done", "3").CombinedOutput()
	if code := exitCode(err); code != 0 || !strings.Contains(string(out), "nothing to do") {
		t.Errorf("a coordinator of the finished job exited %d, want 0 saying there is nothing to do:\n%s", code, out)
	}

	c := coordinator("stopped", "100000")
	logPath := filepath.Join(dir, "stopped.log")
	f, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	c.Stdout, c.Stderr = f, f
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- c.Wait() }()
	t.Cleanup(func() {
		_ = c.Process.Kill()
		<-done
		done <- nil
	})
	waitLog(t, logPath, "step 2/100000 loss")
	start := time.Now()
	if err := c.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		done <- err
		log, _ := os.ReadFile(logPath)
		t.Logf("coordinator exited %.0f ms after SIGTERM", time.Since(start).Seconds()*1000)
		if code := exitCode(err); code != 0 || !strings.Contains(string(log), "leadership of job stopped resigned") {
			t.Errorf("the coordinator exited %d after SIGTERM, want 0 having resigned:\n%s", code, log)
		}
		if strings.Contains(string(log), "context canceled") {
			t.Errorf("the stopped coordinator's log says \"context canceled\":\n%s", log)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("coordinator still running 15 s after SIGTERM")
	}
}
