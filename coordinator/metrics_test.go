package coordinator_test

import (
	"context"
	"testing"
	"time"

	"stagecoach/coordinator"
	"stagecoach/internal/metrics"
	"stagecoach/internal/metrics/metricstest"
	"stagecoach/sim"
)

// TestCoordinatorMetricsAfterRealTraining trains 3 real steps on two
// workers with the coordinator's metrics served on a loopback port,
// scrapes them over HTTP while leading and after, then resumes the job to
// 5 steps under a second coordinator and finds the takeover counted.
func TestCoordinatorMetricsAfterRealTraining(t *testing.T) {
	corpus := writeCorpus(t)
	const job = "metrics"
	cl := startCluster(t, job, 2)
	out := t.TempDir()
	run := func(steps int, onStep func(url string, r coordinator.StepReport)) metricstest.Samples {
		t.Helper()
		reg := metrics.NewRegistry()
		srv, err := metrics.Serve("127.0.0.1:0", reg, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer srv.Close()
		url := "http://" + srv.Addr() + "/metrics"
		co, err := coordinator.New(coordinator.Config{Simulator: sim.Simulator{},
			Job: job, Endpoints: cl.endpoints, TTL: 2, Workers: 2, Schedule: "gpipe",
			Train: tinyTrain(3), Steps: steps, CorpusDir: corpus, OutDir: out, CheckpointDir: cl.root, Checkpoint: true,
			Metrics: metrics.NewCoordinator(reg),
			OnStep: func(r coordinator.StepReport) {
				if onStep != nil {
					onStep(url, r)
				}
			},
		})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		if _, err := co.Run(ctx); err != nil {
			t.Fatal(err)
		}
		return metricstest.Scrape(t, url)
	}
	get := func(s metricstest.Samples, name string, labels ...string) float64 {
		t.Helper()
		v, ok := s.Get(name, labels...)
		if !ok {
			t.Fatalf("series %s missing", metricstest.Series(name, labels...))
		}
		return v
	}

	var token float64
	var iterSum float64
	s := run(3, func(url string, r coordinator.StepReport) {
		iterSum += r.IterationS
		if r.Step != 2 {
			return
		}
		during := metricstest.Scrape(t, url)
		if v := get(during, "stagecoach_coordinator_is_leader"); v != 1 {
			t.Errorf("is_leader %v while leading, want 1", v)
		}
		if v := get(during, "stagecoach_coordinator_steps_committed_total"); v != 2 {
			t.Errorf("steps committed %v at step 2", v)
		}
		token = get(during, "stagecoach_coordinator_fencing_token")
	})
	if v := get(s, "stagecoach_coordinator_steps_committed_total"); v != 3 {
		t.Errorf("steps committed %v, want 3", v)
	}
	if v := get(s, "stagecoach_coordinator_committed_step"); v != 3 {
		t.Errorf("last committed step %v, want 3", v)
	}
	if v := get(s, "stagecoach_coordinator_iteration_duration_seconds_count"); v != 3 {
		t.Errorf("iterations timed %v, want 3", v)
	}
	if v := get(s, "stagecoach_coordinator_iteration_duration_seconds_sum"); v <= 0 || v > 1.01*iterSum+1e-3 {
		t.Errorf("iteration time %v s, want positive and at most the reported %v s", v, iterSum)
	}
	if v := get(s, "stagecoach_coordinator_tokens_total"); v != 3*4*2*16 {
		t.Errorf("tokens %v, want %d", v, 3*4*2*16)
	}
	if v := get(s, "stagecoach_coordinator_loss"); !(v > 0 && v < 10) {
		t.Errorf("loss %v nats/byte", v)
	}
	if v := get(s, "stagecoach_coordinator_plan_epoch"); v < 1 {
		t.Errorf("plan epoch %v, want >= 1", v)
	}
	if token <= 0 || get(s, "stagecoach_coordinator_fencing_token") != token {
		t.Errorf("fencing token %v while leading, %v after", token, get(s, "stagecoach_coordinator_fencing_token"))
	}
	if v := get(s, "stagecoach_coordinator_is_leader"); v != 0 {
		t.Errorf("is_leader %v after the run, want 0", v)
	}
	if v := get(s, "stagecoach_coordinator_recoveries_total", "kind", metrics.RecoveryLeaderResume); v != 0 {
		t.Errorf("leader resumes %v on a new job", v)
	}

	// A second coordinator takes the job over from its checkpoint.
	s = run(5, nil)
	if v := get(s, "stagecoach_coordinator_recoveries_total", "kind", metrics.RecoveryLeaderResume); v != 1 {
		t.Errorf("leader resumes %v after taking a job over, want 1", v)
	}
	if v := get(s, "stagecoach_coordinator_steps_committed_total"); v != 2 {
		t.Errorf("steps committed by the second coordinator %v, want 2", v)
	}
	if v := get(s, "stagecoach_coordinator_committed_step"); v != 5 {
		t.Errorf("last committed step %v, want 5", v)
	}
	if v := get(s, "stagecoach_coordinator_fencing_token"); v <= token {
		t.Errorf("second leader's token %v is not above the first's %v", v, token)
	}
}
