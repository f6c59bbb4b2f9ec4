package metrics_test

import (
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"stagecoach/internal/metrics"
	"stagecoach/internal/metrics/metricstest"
)

func TestServeMetricsAndHealth(t *testing.T) {
	reg := metrics.NewRegistry()
	co := metrics.NewCoordinator(reg)
	w := metrics.NewWorker(reg)
	var failures, lost uint64 = 3, 1
	metrics.RegisterLease(reg, func() uint64 { return failures }, func() uint64 { return lost })
	metrics.RegisterIgnored(reg, []string{"member", "iteration"}, func(kind string) uint64 { return uint64(len(kind)) })
	var unhealthy error
	srv, err := metrics.Serve("127.0.0.1:0", reg, func() error { return unhealthy })
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()

	co.Leading(42)
	co.SetEpoch(3)
	co.StepCommitted(1, 250*time.Millisecond, 512, 2.5)
	co.StepCommitted(2, 150*time.Millisecond, 512, 2.25)
	co.Recovered(metrics.RecoveryRestore)
	w.Action("Forward", 3*time.Millisecond)
	w.TensorSent(4096)
	w.TensorReceived(1024)
	w.TensorRejected(metrics.RejectStaleEpoch)
	w.RPC("RunIteration", "OK", 20*time.Millisecond)

	s := metricstest.Scrape(t, "http://"+srv.Addr()+"/metrics")
	want := map[string]float64{
		"stagecoach_coordinator_steps_committed_total":                                  2,
		"stagecoach_coordinator_committed_step":                                         2,
		"stagecoach_coordinator_tokens_total":                                           1024,
		"stagecoach_coordinator_loss":                                                   2.25,
		"stagecoach_coordinator_iteration_duration_seconds_count":                       2,
		"stagecoach_coordinator_iteration_duration_seconds_sum":                         0.4,
		`stagecoach_coordinator_recoveries_total{kind="restore"}`:                       1,
		`stagecoach_coordinator_recoveries_total{kind="repath"}`:                        0,
		"stagecoach_coordinator_plan_epoch":                                             3,
		"stagecoach_coordinator_is_leader":                                              1,
		"stagecoach_coordinator_fencing_token":                                          42,
		`stagecoach_worker_action_duration_seconds_count{op="Forward"}`:                 1,
		"stagecoach_worker_tensor_sent_bytes_total":                                     4096,
		"stagecoach_worker_tensors_sent_total":                                          1,
		"stagecoach_worker_tensor_received_bytes_total":                                 1024,
		`stagecoach_worker_tensors_rejected_total{reason="stale_epoch"}`:                1,
		`stagecoach_worker_tensors_rejected_total{reason="oversize"}`:                   0,
		`stagecoach_worker_rpc_duration_seconds_count{code="OK",method="RunIteration"}`: 1,
		"stagecoach_lease_renewal_failures_total":                                       3,
		"stagecoach_lease_lost_total":                                                   1,
		`stagecoach_etcd_records_ignored_total{kind="member"}`:                          6,
		`stagecoach_etcd_records_ignored_total{kind="iteration"}`:                       9,
	}
	for k, v := range want {
		got, ok := s[k]
		if !ok {
			t.Errorf("series %s missing", k)
		} else if d := got - v; d > 1e-9 || d < -1e-9 {
			t.Errorf("%s = %v, want %v", k, got, v)
		}
	}
	if _, ok := s["go_goroutines"]; !ok {
		t.Error("no Go runtime metrics")
	}

	co.NotLeading()
	if got := metricstest.Scrape(t, "http://"+srv.Addr()+"/metrics")["stagecoach_coordinator_is_leader"]; got != 0 {
		t.Errorf("is_leader %v after NotLeading, want 0", got)
	}
	if co.Epoch() != 3 || co.FencingToken() != 42 {
		t.Errorf("epoch %d token %d, want 3 and 42", co.Epoch(), co.FencingToken())
	}

	health := func() (int, string) {
		resp, err := http.Get("http://" + srv.Addr() + "/healthz")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := health(); code != 200 || strings.TrimSpace(body) != "ok" {
		t.Errorf("healthz: %d %q, want 200 ok", code, body)
	}
	unhealthy = errors.New("not registered in etcd")
	if code, body := health(); code != 503 || !strings.Contains(body, "not registered") {
		t.Errorf("healthz when unhealthy: %d %q, want 503 with the reason", code, body)
	}
}

// TestNilInstrumentsRecordNothing: library code calls the instruments
// unconditionally; a process without metrics passes nil.
func TestNilInstrumentsRecordNothing(t *testing.T) {
	var co *metrics.Coordinator
	var w *metrics.Worker
	co.Leading(1)
	co.NotLeading()
	co.SetEpoch(1)
	co.StepCommitted(1, time.Second, 1, 1)
	co.Recovered(metrics.RecoveryRejoin)
	w.Action("Forward", time.Second)
	w.TensorSent(1)
	w.TensorReceived(1)
	w.TensorRejected(metrics.RejectOther)
	w.RPC("Step", "OK", time.Second)
	w.HeapPeak(1)
	if co.Epoch() != 0 || co.FencingToken() != 0 {
		t.Error("a nil coordinator reports an epoch or token")
	}
}

func TestServeRefusesABadAddress(t *testing.T) {
	if _, err := metrics.Serve("127.0.0.1:notaport", metrics.NewRegistry(), nil); err == nil {
		t.Fatal("Serve accepted a bad address")
	}
}
