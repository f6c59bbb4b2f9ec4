package failures

import (
	"math"
	"strings"
	"testing"
	"time"

	"stagecoach/planner"
	"stagecoach/sim"
)

func gpipeJob(t *testing.T, every int) Job {
	t.Helper()
	nodes := []string{"a", "b", "c", "d", "e", "f", "g", "h"}
	return Job{Name: "gpipe", Planner: Planner{Snapshot: planner.Snapshot{Schedule: "gpipe", Rules: planner.Rules{Stages: 4, Microbatches: 8}}},
		Cluster: sim.Homogeneous(), Nodes: nodes, CheckpointEvery: every,
		Costs: Costs{DetectS: 0.5, LeaseTTLS: 5, PlanS: 1, CheckpointS: 2, RestoreS: 3}}
}

func near(a, b float64) bool { return math.Abs(a-b) <= 1e-9*math.Max(1, math.Abs(b)) }

// Without failures: K steps take K iterations plus a checkpoint write
// every CheckpointEvery steps.
func TestNoFailures(t *testing.T) {
	job := gpipeJob(t, 5)
	job.Iterations = 12
	out, err := Run(job, nil)
	if err != nil {
		t.Fatal(err)
	}
	it := out.FailureFreeS
	if out.Committed != 12 || !near(out.ElapsedS, 12*it+2*2) {
		t.Fatalf("committed %d in %v s, want 12 in %v s", out.Committed, out.ElapsedS, 12*it+4)
	}
	if out.Samples != 12*8 {
		t.Fatalf("samples %v, want 96", out.Samples)
	}
}

// A crash restores from the last checkpoint on the survivors: a whole
// pipeline replica (4 of the 7 left), replaying the steps after the
// checkpoint, each at the new plan's iteration time; the rejoin brings
// the second replica back through a hand-off.
func TestCrashRestoreReplayRejoin(t *testing.T) {
	job := gpipeJob(t, 5)
	job.Iterations = 20
	probe, err := Run(Job{Name: "p", Planner: job.Planner, Cluster: job.Cluster, Nodes: job.Nodes[:4], Iterations: 1, Costs: job.Costs}, nil)
	if err != nil {
		t.Fatal(err)
	}
	one, two := probe.FailureFreeS, 0.0
	full, _ := Run(Job{Name: "p", Planner: job.Planner, Cluster: job.Cluster, Nodes: job.Nodes, Iterations: 1, Costs: job.Costs}, nil)
	two = full.FailureFreeS
	// Crash c during step 8 (after 7 commits and the checkpoint at 5).
	at := 7*two + 2 + two/2
	trace := &Trace{Events: []Event{{At: Duration(at * float64(time.Second)), Node: "c", Kind: Crash},
		{At: Duration((at + 10*one) * float64(time.Second)), Node: "c", Kind: Rejoin}}}
	if err := trace.check(job.Nodes); err != nil {
		t.Fatal(err)
	}
	out, err := Run(job, trace)
	if err != nil {
		t.Fatal(err)
	}
	if out.Lost != 1 || out.Replayed != 2 {
		t.Fatalf("lost %d, replayed %d; want 1 and 2 (steps 6, 7)", out.Lost, out.Replayed)
	}
	r := out.Recoveries[0]
	if r.Action != "restore" || r.Workers != 4 {
		t.Fatalf("recovery %+v, want a restore on 4 workers", r)
	}
	want := 0.5 + 1 + 3 + 2*one // detect, plan, load, replay 2 steps on one replica
	if !near(r.RecoverS, want) {
		t.Fatalf("recovered in %v s, want %v", r.RecoverS, want)
	}
	var rejoin *Recovery
	for i := range out.Recoveries {
		if out.Recoveries[i].Action == "rejoin" {
			rejoin = &out.Recoveries[i]
		}
	}
	if rejoin == nil || rejoin.Workers != 8 || !near(rejoin.RecoverS, 2+1+3) {
		t.Fatalf("rejoin %+v, want 8 workers after a 6 s hand-off", rejoin)
	}
	if out.Committed != 20 {
		t.Fatalf("committed %d, want 20", out.Committed)
	}
}

// A pause shorter than the lease TTL stalls the iteration; a longer one
// is a failure noticed at the TTL, and the node comes back by itself.
func TestPause(t *testing.T) {
	job := gpipeJob(t, 0)
	job.Iterations = 6
	it := func() float64 {
		o, _ := Run(Job{Name: "p", Planner: job.Planner, Cluster: job.Cluster, Nodes: job.Nodes, Iterations: 1, Costs: job.Costs}, nil)
		return o.FailureFreeS
	}()
	short := &Trace{Events: []Event{{At: Duration(time.Duration(it/2*1e9) * time.Nanosecond), Node: "a", Kind: Pause, For: Duration(2 * time.Second)}}}
	out, err := Run(job, short)
	if err != nil {
		t.Fatal(err)
	}
	if out.Lost != 0 || !near(out.ElapsedS, 6*it+2) || out.Recoveries[0].Action != "stall" {
		t.Fatalf("short pause: lost %d, elapsed %v (want %v), %+v", out.Lost, out.ElapsedS, 6*it+2, out.Recoveries)
	}
	long := &Trace{Events: []Event{{At: Duration(time.Duration(it/2*1e9) * time.Nanosecond), Node: "a", Kind: Pause, For: Duration(30 * time.Second)}}}
	out, err = Run(job, long)
	if err != nil {
		t.Fatal(err)
	}
	if out.Lost != 1 || out.Recoveries[0].Action != "restore" {
		t.Fatalf("long pause: %+v", out.Recoveries)
	}
	// Detected at the TTL: 5 s after the pause began, then plan and load.
	if r := out.Recoveries[0]; !near(r.RecoverS, 5+1+3) {
		t.Fatalf("long pause recovered in %v s, want 9 (TTL, plan, load; no checkpoint: nothing to replay)", r.RecoverS)
	}
	rejoined := false
	for _, r := range out.Recoveries {
		rejoined = rejoined || (r.Action == "rejoin" && strings.Contains(","+r.Node+",", ",a,") && r.Workers == 8)
	}
	if !rejoined {
		t.Fatalf("the paused node never rejoined: %+v", out.Recoveries)
	}
}

// Losing too many nodes stops a run of so many steps, with the reason; a
// run of a given length waits to its end.
func TestStopsWhenNothingFits(t *testing.T) {
	job := gpipeJob(t, 0)
	job.Nodes = job.Nodes[:4]
	job.Iterations = 1000
	trace := &Trace{Events: []Event{{At: Duration(time.Minute), Node: "b", Kind: Crash}}}
	out, err := Run(job, trace)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.Stopped, "cannot hold 4 stages") {
		t.Fatalf("stopped %q", out.Stopped)
	}
	job.Iterations, job.HorizonS = 0, 3600
	out, err = Run(job, trace)
	if err != nil {
		t.Fatal(err)
	}
	last := out.Recoveries[len(out.Recoveries)-1]
	if out.Stopped != "" || out.ElapsedS != 3600 || last.Action != "wait" || !near(last.RecoverS, 3600-60) {
		t.Fatalf("horizon run: stopped %q, elapsed %v, last recovery %+v; want a wait to the end", out.Stopped, out.ElapsedS, last)
	}
}

func TestParseTrace(t *testing.T) {
	nodes := []string{"n1", "n2"}
	good := "events:\n  - {at: 90m, node: n2, kind: crash}\n  - {at: 10s, node: n1, kind: pause, for: 20s}\n  - {at: 2h, node: n1, kind: degrade, bandwidth_gib_s: 0.5}\n"
	tr, err := ParseTrace([]byte(good), nodes)
	if err != nil {
		t.Fatal(err)
	}
	if len(tr.Events) != 3 || tr.Events[0].Node != "n1" || tr.Events[1].At.Seconds() != 5400 {
		t.Fatalf("parsed %+v", tr.Events)
	}
	for _, bad := range []struct{ yaml, want string }{
		{"events:\n  - {at: 1m, node: n9, kind: crash}\n", `no node "n9"`},
		{"events:\n  - {at: 1m, node: n1, kind: explode}\n", `kind "explode"`},
		{"events:\n  - {at: -1m, node: n1, kind: crash}\n", "negative"},
		{"events:\n  - {at: 1m, node: n1, kind: pause}\n", "pause needs for"},
		{"events:\n  - {at: 1m, node: n1, kind: degrade}\n", "bandwidth_gib_s"},
		{"events:\n  - {at: soon, node: n1, kind: crash}\n", "duration"},
		{"events:\n  - {at: 1m, node: n1, kind: crash, when: now}\n", "when"},
	} {
		_, err := ParseTrace([]byte(bad.yaml), nodes)
		if err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("%q: error %v, want it to say %q", bad.yaml, err, bad.want)
		}
	}
}

func TestDrawIsSeeded(t *testing.T) {
	nodes := []string{"a", "b", "c"}
	x, err := Draw(nodes, time.Hour, 10*time.Minute, 48*time.Hour, 7)
	if err != nil {
		t.Fatal(err)
	}
	y, _ := Draw(nodes, time.Hour, 10*time.Minute, 48*time.Hour, 7)
	if len(x.Events) != len(y.Events) || len(x.Events) < 60 {
		t.Fatalf("%d and %d events (want the same, about 3 x 48 crashes and rejoins)", len(x.Events), len(y.Events))
	}
	for i := range x.Events {
		if x.Events[i] != y.Events[i] {
			t.Fatalf("event %d differs", i)
		}
	}
	if _, err := Draw(nodes, time.Nanosecond, 0, 48*time.Hour, 1); err == nil {
		t.Fatal("a trace of billions of events was drawn")
	}
}

func FuzzParseTrace(f *testing.F) {
	f.Add([]byte("events:\n  - {at: 90m, node: n2, kind: crash}\n"))
	f.Add([]byte("events:\n  - {at: 1s, node: n1, kind: pause, for: 1ms}\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		tr, err := ParseTrace(b, []string{"n1", "n2"})
		if err != nil {
			return
		}
		for i := 1; i < len(tr.Events); i++ {
			if tr.Events[i].At < tr.Events[i-1].At {
				t.Fatal("events not sorted")
			}
		}
	})
}

// A checkpoint step commits once its checkpoint is written: its point on
// the timeline comes after the write, as the runtime's commit does.
func TestCheckpointStepCommitsAfterWrite(t *testing.T) {
	job := gpipeJob(t, 2)
	job.Iterations = 4
	out, err := Run(job, nil)
	if err != nil {
		t.Fatal(err)
	}
	it := out.FailureFreeS
	want := []float64{it, 2*it + 2, 3*it + 2, 4*it + 4}
	for i, p := range out.Timeline {
		if !near(p.T, want[i]) {
			t.Fatalf("step %d committed at %v s, want %v (checkpoint writes of 2 s at steps 2 and 4)", i+1, p.T, want[i])
		}
	}
}

// A restore with fewer healthy nodes than the job wants waits
// ReplaceWaitS for replacements before it settles for them.
func TestRestoreWaitsForReplacements(t *testing.T) {
	job := gpipeJob(t, 0)
	job.Iterations = 4
	job.Costs.ReplaceWaitS = 7
	probe, err := Run(Job{Name: "p", Planner: job.Planner, Cluster: job.Cluster, Nodes: job.Nodes[:4], Iterations: 1, Costs: job.Costs}, nil)
	if err != nil {
		t.Fatal(err)
	}
	one := probe.FailureFreeS
	trace := &Trace{Events: []Event{{At: Duration(time.Millisecond), Node: "c", Kind: Crash}}}
	out, err := Run(job, trace)
	if err != nil {
		t.Fatal(err)
	}
	r := out.Recoveries[0]
	if want := 0.5 + 7 + 1 + 3; r.Action != "restore" || r.Workers != 4 || !near(r.RecoverS, want) {
		t.Fatalf("recovery %+v, want a restore on 4 workers in %v s (detect, wait, plan, load)", r, want)
	}
	if want := 0.001 + 0.5 + 7 + 1 + 3 + 4*one; !near(out.ElapsedS, want) {
		t.Fatalf("elapsed %v s, want %v", out.ElapsedS, want)
	}
}
