package sim

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"stagecoach/scheduler"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/golden")

// detailRun simulates a small generated schedule with a full timeline.
func detailRun(t *testing.T, c *Cluster, name string, s scheduler.Spec) *Result {
	t.Helper()
	p, err := scheduler.Generate(name, s)
	if err != nil {
		t.Fatal(err)
	}
	r, err := Run(p, c, Options{Detail: true})
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return r
}

// slowLinks is the homogeneous cluster with a fixed cost per hop, so
// messages occupy the communication track.
func slowLinks() *Cluster {
	c := Homogeneous()
	c.HopOverheadS = 0.25
	c.Compute.ActivationBytesPerSample = 1 << 20
	return c
}

func checkGolden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", "golden", name)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./sim/ -run %s -update to create it)", err, t.Name())
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from the golden file %s (rerun with -update if the change is intended)\ngot:\n%s", name, path, got)
	}
}

type traceEvent struct {
	Name string         `json:"name"`
	Cat  string         `json:"cat"`
	Ph   string         `json:"ph"`
	ID   *int           `json:"id"`
	BP   string         `json:"bp"`
	Pid  int            `json:"pid"`
	Tid  int            `json:"tid"`
	Ts   float64        `json:"ts"`
	Dur  float64        `json:"dur"`
	Args map[string]any `json:"args"`
}

func parseTrace(t *testing.T, data []byte) []traceEvent {
	t.Helper()
	var doc struct {
		TraceEvents []traceEvent `json:"traceEvents"`
	}
	if err := json.Unmarshal(data, &doc); err != nil {
		t.Fatalf("trace is not valid JSON: %v\n%s", err, data)
	}
	return doc.TraceEvents
}

// checkFlows asserts that every flow start has exactly one finish, that
// the finish lies on a compute slice of the receiving process starting at
// the flow's end time, and returns the number of flows.
func checkFlows(t *testing.T, evs []traceEvent) int {
	t.Helper()
	type end struct {
		s, f *traceEvent
	}
	flows := map[int]*end{}
	starts := map[[2]float64]bool{} // pid, ts of compute slices
	for i := range evs {
		e := &evs[i]
		switch e.Ph {
		case "X":
			if e.Tid == traceTidCompute {
				starts[[2]float64{float64(e.Pid), e.Ts}] = true
			}
		case "s", "f":
			if e.ID == nil {
				t.Fatalf("flow event without id: %+v", e)
			}
			fe := flows[*e.ID]
			if fe == nil {
				fe = &end{}
				flows[*e.ID] = fe
			}
			if e.Ph == "s" {
				if fe.s != nil {
					t.Fatalf("flow %d starts twice", *e.ID)
				}
				fe.s = e
			} else {
				if fe.f != nil {
					t.Fatalf("flow %d finishes twice", *e.ID)
				}
				if e.BP != "e" {
					t.Fatalf("flow %d finish has bp %q, want e", *e.ID, e.BP)
				}
				fe.f = e
			}
		}
	}
	for id, fe := range flows {
		if fe.s == nil || fe.f == nil {
			t.Fatalf("flow %d is not paired", id)
		}
		if fe.s.Cat != fe.f.Cat || fe.s.Name != fe.f.Name {
			t.Fatalf("flow %d: start %s/%s, finish %s/%s", id, fe.s.Cat, fe.s.Name, fe.f.Cat, fe.f.Name)
		}
		if !starts[[2]float64{float64(fe.f.Pid), fe.f.Ts}] {
			t.Fatalf("flow %d ends at pid %d ts %v where no compute slice starts", id, fe.f.Pid, fe.f.Ts)
		}
		if fe.f.Ts < fe.s.Ts {
			t.Fatalf("flow %d goes back in time: %v -> %v", id, fe.s.Ts, fe.f.Ts)
		}
	}
	return len(flows)
}

func TestChromeTraceGolden(t *testing.T) {
	r := detailRun(t, slowLinks(), "1f1b", scheduler.Spec{Stages: 2, Microbatches: 2})
	var a, b bytes.Buffer
	if err := WriteChromeTrace(&a, r); err != nil {
		t.Fatal(err)
	}
	if err := WriteChromeTrace(&b, r); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.Bytes(), b.Bytes()) {
		t.Fatal("same result, different trace bytes")
	}
	// A second simulation of the same input must write the same bytes too.
	var c bytes.Buffer
	if err := WriteChromeTrace(&c, detailRun(t, slowLinks(), "1f1b", scheduler.Spec{Stages: 2, Microbatches: 2})); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.Bytes(), c.Bytes()) {
		t.Fatal("same input simulated twice, different trace bytes")
	}
	checkGolden(t, "trace_1f1b_p2_m2.json", a.Bytes())

	evs := parseTrace(t, a.Bytes())
	var computes, sends int
	names := map[string]bool{}
	for _, e := range evs {
		if e.Ph != "X" {
			continue
		}
		if e.Dur < 0 {
			t.Fatalf("negative duration: %+v", e)
		}
		switch e.Tid {
		case traceTidCompute:
			computes++
			names[e.Name] = true
			for _, k := range []string{"microbatch", "stage", "iteration"} {
				if _, ok := e.Args[k]; !ok {
					t.Fatalf("%s lacks arg %s", e.Name, k)
				}
			}
		case traceTidComm:
			sends++
			if e.Args["bytes"] == nil || !strings.HasPrefix(e.Name, "send ") {
				t.Fatalf("bad send event %+v", e)
			}
		}
	}
	if computes != r.Plan.TotalActions() {
		t.Fatalf("%d compute slices, plan has %d actions", computes, r.Plan.TotalActions())
	}
	for _, n := range []string{"PP:0F0", "PP:1F1", "PP:1B0", "PP:0B1", "PP:1L0"} {
		if !names[n] {
			t.Errorf("no slice named %s (have %v)", n, names)
		}
	}
	// Each microbatch sends an activation, a loss input (stays on worker
	// 1) and a gradient: two cross-worker messages per microbatch.
	if sends != 4 {
		t.Fatalf("%d send slices, want 4", sends)
	}
	if n := checkFlows(t, evs); n != sends {
		t.Fatalf("%d flows, want one per send (%d)", n, sends)
	}
}

func TestChromeTraceFreeLinksStillHasFlows(t *testing.T) {
	r := detailRun(t, Homogeneous(), "gpipe", scheduler.Spec{Stages: 3, Microbatches: 4})
	var buf bytes.Buffer
	if err := WriteChromeTrace(&buf, r); err != nil {
		t.Fatal(err)
	}
	evs := parseTrace(t, buf.Bytes())
	// 2 activations forward and 2 gradients back per microbatch.
	if n := checkFlows(t, evs); n != 4*4 {
		t.Fatalf("%d flows, want 16", n)
	}
}

func TestChromeTraceComparisonUsesPidRanges(t *testing.T) {
	a := detailRun(t, slowLinks(), "gpipe", scheduler.Spec{Stages: 2, Microbatches: 3})
	b := detailRun(t, slowLinks(), "1f1b", scheduler.Spec{Stages: 2, Microbatches: 3})
	var buf bytes.Buffer
	if err := WriteChromeTrace(&buf, a, b); err != nil {
		t.Fatal(err)
	}
	evs := parseTrace(t, buf.Bytes())
	procs := map[int]string{}
	for _, e := range evs {
		if e.Name == "process_name" {
			procs[e.Pid] = e.Args["name"].(string)
		}
	}
	for pid, want := range map[int]string{1000: "gpipe: worker 0", 1001: "gpipe: worker 1", 2000: "1f1b: worker 0", 2001: "1f1b: worker 1"} {
		if !strings.HasPrefix(procs[pid], want) {
			t.Errorf("pid %d is %q, want prefix %q", pid, procs[pid], want)
		}
	}
	if len(procs) != 4 {
		t.Errorf("processes %v, want 4", procs)
	}
	checkFlows(t, evs)
}

func TestChromeTraceErrors(t *testing.T) {
	p, err := scheduler.Generate("1f1b", scheduler.Spec{Stages: 2, Microbatches: 2})
	if err != nil {
		t.Fatal(err)
	}
	r, err := Run(p, Homogeneous(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := WriteChromeTrace(&buf, r); err == nil || !strings.Contains(err.Error(), "Detail") {
		t.Fatalf("trace without timeline: err %v, want one naming Options.Detail", err)
	}
	if err := WriteChromeTrace(&buf); err == nil {
		t.Fatal("no results: want an error")
	}
}

func TestJSONString(t *testing.T) {
	for _, s := range []string{"plain", `q"uote\`, "tab\tnl\n", "ctl\x01", "bad\xff", "a -> b <&>", "ünï"} {
		var back string
		if err := json.Unmarshal([]byte(jsonString(s)), &back); err != nil {
			t.Fatalf("%q: %v", s, err)
		}
		want := strings.ToValidUTF8(s, "\ufffd")
		if back != want {
			t.Fatalf("%q round-trips to %q", s, back)
		}
	}
}
