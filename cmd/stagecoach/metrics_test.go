package main

import (
	"bufio"
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"stagecoach/internal/metrics/metricstest"
)

// jsonLines parses every line of a log as one JSON object; it fails the
// test on any other line.
func jsonLines(t *testing.T, what, text string) []map[string]any {
	t.Helper()
	var out []map[string]any
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("%s: line %q is not JSON: %v", what, sc.Text(), err)
		}
		for _, k := range []string{"time", "level", "msg"} {
			if _, ok := m[k]; !ok {
				t.Fatalf("%s: line %q has no %s", what, sc.Text(), k)
			}
		}
		out = append(out, m)
	}
	return out
}

// findLine is the first line whose msg starts with prefix.
func findLine(lines []map[string]any, prefix string) map[string]any {
	for _, l := range lines {
		if msg, _ := l["msg"].(string); strings.HasPrefix(msg, prefix) {
			return l
		}
	}
	return nil
}

// TestWorkerMetricsAndJSONLogsAfterTraining runs two `stagecoach worker`
// processes with --metrics-addr and --log-format json, trains 3 steps
// with `stagecoach coordinator` against them, then scrapes each worker's
// /metrics and /healthz over HTTP and checks that every log line the
// processes wrote is a JSON object with the expected attributes.
func TestWorkerMetricsAndJSONLogsAfterTraining(t *testing.T) {
	if testing.Short() {
		t.Skip("starts worker and coordinator processes")
	}
	dir := t.TempDir()
	_, ep := testEtcd(t, dir)
	exe := selfExe(t)
	type proc struct {
		cmd  *exec.Cmd
		log  string
		done chan error
	}
	var workers []*proc
	for _, name := range []string{"w0", "w1"} {
		p := &proc{log: filepath.Join(dir, name+".log"), done: make(chan error, 1)}
		f, err := os.Create(p.log)
		if err != nil {
			t.Fatal(err)
		}
		args := []string{"worker", "--etcd", ep, "--job", "metrics", "--name", name, "--ttl", "2",
			"--data-dir", filepath.Join(dir, name), "--checkpoint-root", filepath.Join(dir, "co", "checkpoints"),
			"--metrics-addr", "127.0.0.1:0", "--log-format", "json"}
		if name == "w1" {
			// w1 computes in a backend process, and says what its
			// operations cost.
			args = append(args, "--backend-cmd", "'"+exe+"' compute-serve --log-format json")
		}
		p.cmd = exec.Command(exe, args...)
		p.cmd.Env = append(os.Environ(), "STAGECOACH_TEST_MAIN=1")
		p.cmd.Stdout, p.cmd.Stderr = f, f
		if err := p.cmd.Start(); err != nil {
			t.Fatal(err)
		}
		go func() { p.done <- p.cmd.Wait(); f.Close() }()
		t.Cleanup(func() {
			_ = p.cmd.Process.Kill()
			<-p.done
		})
		workers = append(workers, p)
	}
	logOf := func(p *proc) string {
		b, _ := os.ReadFile(p.log)
		return string(b)
	}
	// Each worker logs where it serves its metrics, then registers.
	addrs := make([]string, len(workers))
	for i, p := range workers {
		deadline := time.Now().Add(30 * time.Second)
		for addrs[i] == "" || findLine(jsonLines(t, p.log, logOf(p)), "registered in job") == nil {
			if time.Now().After(deadline) {
				t.Fatalf("worker %d not serving metrics and registered after 30 s:\n%s", i, logOf(p))
			}
			time.Sleep(100 * time.Millisecond)
			if l := findLine(jsonLines(t, p.log, logOf(p)), "serving metrics"); l != nil {
				addrs[i], _ = l["metrics_addr"].(string)
			}
		}
		resp, err := http.Get("http://" + addrs[i] + "/healthz")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("worker %d /healthz: %s once registered, want 200", i, resp.Status)
		}
	}

	out, errOut, code := runCLI(t, dir, "coordinator", "--etcd", ep, "--job", "metrics", "--workers", "2", "--ttl", "2",
		"--steps", "3", "--seed", "3", "--layers", "3", "--dim", "16", "--heads", "2", "--ctx", "16",
		"--microbatches", "4", "--microbatch-size", "2", "--corpus", upCorpus(t), "--out", filepath.Join(dir, "co"),
		"--log-format", "json")
	if code != 0 {
		t.Fatalf("coordinator exited %d:\n%s%s", code, out, errOut)
	}
	co := jsonLines(t, "coordinator stderr", errOut)
	lead := findLine(co, "leading job metrics")
	if lead == nil || lead["role"] != "coordinator" || lead["job"] != "metrics" || lead["fencing_token"] == nil {
		t.Errorf("no leadership line with role, job and fencing token in the coordinator's log: %v", lead)
	}
	if l := findLine(co, "epoch 1:"); l == nil || l["epoch"] != float64(1) {
		t.Errorf("the plan line has no epoch attribute: %v", l)
	}

	for i, p := range workers {
		s := metricstest.Scrape(t, "http://"+addrs[i]+"/metrics")
		// GPipe over two stages: every worker runs 4 forwards and 4
		// backwards a step, and exchanges one tensor per microbatch
		// each way with its peer.
		for _, op := range []string{"Forward", "Backward"} {
			if n, _ := s.Get("stagecoach_worker_action_duration_seconds_count", "op", op); n != 12 {
				t.Errorf("worker %d: %v %s actions, want 12", i, n, op)
			}
		}
		for _, m := range []string{"RunIteration", "Step"} {
			if n, _ := s.Get("stagecoach_worker_rpc_duration_seconds_count", "method", m, "code", "OK"); n != 3 {
				t.Errorf("worker %d: %v %s RPCs, want 3", i, n, m)
			}
		}
		sent, _ := s.Get("stagecoach_worker_tensor_sent_bytes_total")
		recv, _ := s.Get("stagecoach_worker_tensor_received_bytes_total")
		if want := float64(3 * 4 * 2 * 16 * 16 * 4); sent != want || recv != want {
			t.Errorf("worker %d: %v bytes sent, %v received, want %v each", i, sent, recv, want)
		}
		if n, ok := s.Get("stagecoach_worker_tensors_rejected_total", "reason", "stale_epoch"); !ok || n != 0 {
			t.Errorf("worker %d: stale-epoch rejections %v (present %v), want 0", i, n, ok)
		}
		if _, ok := s.Get("stagecoach_lease_renewal_failures_total"); !ok {
			t.Errorf("worker %d: no lease renewal failure counter", i)
		}
		// Only w1's backend is a process: its 12 Forwards and Backwards
		// were timed through the protocol, each with the backend's own
		// compute time, which their sum cannot exceed.
		for _, op := range []string{"Forward", "Backward"} {
			calls, _ := s.Get("stagecoach_worker_backend_call_seconds_count", "op", op)
			computed, _ := s.Get("stagecoach_worker_backend_compute_seconds_count", "op", op)
			callSum, _ := s.Get("stagecoach_worker_backend_call_seconds_sum", "op", op)
			computeSum, _ := s.Get("stagecoach_worker_backend_compute_seconds_sum", "op", op)
			want := float64(12 * i)
			if calls != want || computed != want || computeSum > callSum || (i == 1 && computeSum <= 0) {
				t.Errorf("worker %d: %v %s backend calls taking %v s, %v compute times summing to %v s; want %v of each, compute within the calls",
					i, calls, op, callSum, computed, computeSum, want)
			}
		}

		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-p.done:
			if err != nil {
				t.Errorf("worker %d exited with %v after SIGTERM", i, err)
			}
			p.done <- err // for the cleanup
		case <-time.After(15 * time.Second):
			t.Errorf("worker %d still running 15 s after SIGTERM", i)
		}
		lines := jsonLines(t, p.log, logOf(p))
		l := findLine(lines, "registered in job metrics")
		if l == nil || l["role"] != "worker" || l["worker"] != []string{"w0", "w1"}[i] || l["job"] != "metrics" {
			t.Errorf("worker %d: registration line without role, worker and job: %v", i, l)
		}
	}
}

func TestLoggingAndMetricsFlagsBadInputExitTwo(t *testing.T) {
	worker := []string{"worker", "--etcd", "127.0.0.1:1", "--job", "j", "--name", "w"}
	for _, tc := range []struct {
		args []string
		says string
	}{
		{append([]string{"--log-format", "xml"}, worker...), "--log-format"},
		{append(worker, "--log-level", "loud"), "--log-level"},
		{append(worker, "--metrics-addr", "nohostport"), "--metrics-addr"},
		{append(worker, "--metrics-addr", "127.0.0.1:http"), "--metrics-addr"},
		{[]string{"coordinator", "--job", "j", "--metrics-addr", "127.0.0.1:70000"}, "--metrics-addr"},
		{[]string{"up", "--workers", "3", "--metrics-addr", "127.0.0.1:65534"}, "--metrics-addr"},
	} {
		_, errOut, code := runCLI(t, t.TempDir(), tc.args...)
		if code != 2 || !strings.Contains(errOut, tc.says) {
			t.Errorf("%v: exit %d, want 2 with a message naming %s (%s)", tc.args, code, tc.says, errOut)
		}
	}
}
