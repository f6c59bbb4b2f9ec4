package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"stagecoach/internal/etcdx"
)

// procAlive reports whether pid is a live process: it has a /proc entry
// and is not a zombie (a dead child its new parent has not reaped yet).
func procAlive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// pid (comm) state ...: comm may hold spaces, so read after its ')'.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] != 'Z'
}

// childrenOf lists the live processes whose parent is pid, from /proc.
func childrenOf(pid int) []int {
	ents, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range ents {
		c, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) > 1 && f[1] == strconv.Itoa(pid) && f[0] != "Z" {
			out = append(out, c)
		}
	}
	return out
}

// waitGone polls until none of pids is alive, for at most bound, and
// returns how long that took, or the pids still alive.
func waitGone(pids []int, bound time.Duration) (time.Duration, []int) {
	start := time.Now()
	for {
		var alive []int
		for _, p := range pids {
			if procAlive(p) {
				alive = append(alive, p)
			}
		}
		if len(alive) == 0 {
			return time.Since(start), nil
		}
		if time.Since(start) > bound {
			return time.Since(start), alive
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitLog polls the file at path until it contains want, for at most 60 s.
func waitLog(t *testing.T, path, want string) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		b, _ := os.ReadFile(path)
		if strings.Contains(string(b), want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s has no %q after 60 s:\n%s", path, want, b)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestKilledUpLeavesNoWorkers kills `stagecoach up` with SIGKILL while
// it trains and checks that its worker processes (each in its own process
// group, so no signal to up's group reaches them) are gone within 2 s.
func TestKilledUpLeavesNoWorkers(t *testing.T) {
	if testing.Short() {
		t.Skip("starts worker processes")
	}
	dir := t.TempDir()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "up")
	up := exec.Command(exe, "up", "--workers", "2", "--ttl", "2", "--steps", "100000", "--layers", "2", "--dim", "16",
		"--heads", "2", "--ctx", "16", "--microbatches", "2", "--microbatch-size", "2", "--corpus", upCorpus(t), "--out", out)
	up.Env = append(os.Environ(), "STAGECOACH_TEST_MAIN=1")
	logf, err := os.Create(filepath.Join(dir, "up.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	up.Stdout, up.Stderr = logf, logf
	if err := up.Start(); err != nil {
		t.Fatal(err)
	}
	var workers []int
	t.Cleanup(func() {
		_ = up.Process.Kill()
		_ = up.Wait()
		for _, p := range workers {
			_ = syscall.Kill(p, syscall.SIGKILL)
		}
	})
	// Training has begun once the coordinator placed the plan; both
	// workers are registered by then.
	waitLog(t, filepath.Join(dir, "up.log"), "epoch 1:")
	workers = childrenOf(up.Process.Pid)
	if len(workers) != 2 {
		t.Fatalf("up (pid %d) has children %v, want its 2 workers", up.Process.Pid, workers)
	}
	if err := up.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = up.Wait()
	took, alive := waitGone(workers, 10*time.Second)
	if alive != nil {
		t.Fatalf("workers %v still running %.1f s after kill -9 of up", alive, took.Seconds())
	}
	t.Logf("both workers gone %.0f ms after kill -9 of up", took.Seconds()*1000)
	if took > 2*time.Second {
		t.Errorf("workers took %.1f s to die after kill -9 of up, want at most 2 s", took.Seconds())
	}
}

// TestWorkerExitsWithItsParent starts a worker with --parent-pid under a
// shell and kills the shell with SIGKILL: with no parent-death signal
// asked of the kernel, the worker's own watchdog must stop it.
func TestWorkerExitsWithItsParent(t *testing.T) {
	if testing.Short() {
		t.Skip("starts worker processes")
	}
	dir := t.TempDir()
	e, ep := testEtcd(t, dir)
	exe := selfExe(t)
	log := filepath.Join(dir, "w0.log")
	// The shell starts the worker in the background, names it its parent
	// and waits: killing the shell orphans the worker.
	sh := exec.Command("sh", "-c", `"$0" worker --etcd "$1" --job orphan --name w0 --ttl 2 --data-dir "$2" --parent-pid $$ >"$3" 2>&1 & echo $!; wait`,
		exe, ep, filepath.Join(dir, "w0"), log)
	sh.Env = append(os.Environ(), "STAGECOACH_TEST_MAIN=1")
	stdout, err := sh.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := sh.Start(); err != nil {
		t.Fatal(err)
	}
	var line [32]byte
	n, _ := stdout.Read(line[:])
	pid, err := strconv.Atoi(strings.TrimSpace(string(line[:n])))
	if err != nil {
		_ = sh.Process.Kill()
		t.Fatalf("the shell did not print the worker's pid: %q", line[:n])
	}
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGKILL) })
	waitLog(t, log, "registered in job orphan")
	if err := sh.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = sh.Wait()
	took, alive := waitGone([]int{pid}, 10*time.Second)
	if alive != nil {
		b, _ := os.ReadFile(log)
		t.Fatalf("worker %d still running %.1f s after its parent died:\n%s", pid, took.Seconds(), b)
	}
	t.Logf("worker gone %.0f ms after its parent was killed", took.Seconds()*1000)
	b, _ := os.ReadFile(log)
	if !strings.Contains(string(b), "is gone: stopping") {
		t.Errorf("the worker's log does not say it stopped for its parent:\n%s", b)
	}
	// It revoked its lease on the way out: its registration is gone at
	// once, not a TTL later.
	cli, err := etcdx.Dial(context.Background(), e.Endpoints(), 0)
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	k, _ := etcdx.NewKeys("orphan")
	if ms, _, err := etcdx.Members(context.Background(), cli, k); err != nil || len(ms) != 0 {
		t.Errorf("members after the worker stopped: %v (%v), want none (lease revoked)", ms, err)
	}
}

// TestWorkerHonoursSIGTERMWithEtcdGone stops etcd under a registered
// worker, waits until the worker is trying to register again (a lease
// grant etcd cannot answer), then sends SIGTERM: it must exit 0 promptly
// instead of waiting on etcd.
func TestWorkerHonoursSIGTERMWithEtcdGone(t *testing.T) {
	if testing.Short() {
		t.Skip("starts worker processes")
	}
	dir := t.TempDir()
	e, ep := testEtcd(t, dir)
	exe := selfExe(t)
	log := filepath.Join(dir, "w0.log")
	f, err := os.Create(log)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	w := exec.Command(exe, "worker", "--etcd", ep, "--job", "term", "--name", "w0",
		"--ttl", "2", "--rejoin-timeout", "10m", "--data-dir", filepath.Join(dir, "w0"))
	w.Env = append(os.Environ(), "STAGECOACH_TEST_MAIN=1")
	w.Stdout, w.Stderr = f, f
	if err := w.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- w.Wait() }()
	t.Cleanup(func() {
		_ = w.Process.Kill()
		<-done
	})
	waitLog(t, log, "registered in job term")
	e.Close()
	waitLog(t, log, "registering again")
	// Past the retry pause: the worker is in its next lease grant.
	time.Sleep(700 * time.Millisecond)
	start := time.Now()
	if err := w.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		took := time.Since(start)
		done <- err // for the cleanup
		t.Logf("worker exited %.0f ms after SIGTERM with etcd gone (%v)", took.Seconds()*1000, err)
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			b, _ := os.ReadFile(log)
			t.Errorf("worker exited %v after SIGTERM, want 0:\n%s", err, b)
		}
	case <-time.After(5 * time.Second):
		b, _ := os.ReadFile(log)
		t.Fatalf("worker still running 5 s after SIGTERM with etcd gone:\n%s", b)
	}
}
