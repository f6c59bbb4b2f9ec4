package scheduler

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

// Hardening: the JSON decoder takes files people write by hand or that
// tools emit, so a malformed or hostile one must give an error, never a
// panic or a hang; and every rule of the validator must fire, naming
// worker, action and rule. (The PyTorch CSV import has its own fuzz
// target, in scheduler/pytorchcsv.)

// FuzzDecode: whatever Decode accepts re-encodes to a plan that decodes to
// the same encoding.
func FuzzDecode(f *testing.F) {
	for _, name := range []string{"gpipe", "1f1b", "interleaved", "zb-h1", "zb-h2", "gpipe-recompute", "looped-bfs", "zb-v", "dualpipe-v"} {
		plan, err := Generate(name, Spec{Stages: 2, Microbatches: 3, Replicas: 2})
		if err != nil {
			f.Fatal(err)
		}
		var b bytes.Buffer
		if err := Encode(&b, plan); err != nil {
			f.Fatal(err)
		}
		f.Add(b.Bytes())
	}
	var b bytes.Buffer
	if err := Encode(&b, skipPlan(4, [][]int{{0, 1, 3}, {0, 2, 3}})); err != nil {
		f.Fatal(err)
	}
	f.Add(b.Bytes())
	f.Add([]byte(`{"version":1}`))
	f.Add([]byte(`{"version":1,"stages":[{"first_layer":0,"layers":1}],"head_stage":0,"workers":[{"node":"a","stages":[0],"replica":0}],"microbatches":[{"samples":1,"path":[{"worker":0,"stage":0}],"loss_worker":0}],"programs":[[{"op":"F","mb":0,"stage":0},{"op":"L","mb":0,"stage":0},{"op":"B","mb":0,"stage":0},{"op":"S","mb":-1,"stage":-1}]]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := DecodeBytes(data)
		if err != nil {
			return
		}
		var one bytes.Buffer
		if err := Encode(&one, p); err != nil {
			t.Fatalf("decoded plan does not encode: %v", err)
		}
		q, err := DecodeBytes(one.Bytes())
		if err != nil {
			t.Fatalf("re-encoded plan does not decode: %v\n%s", err, one.Bytes())
		}
		var two bytes.Buffer
		if err := Encode(&two, q); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(one.Bytes(), two.Bytes()) {
			t.Fatalf("encode, decode, encode changed the plan:\n%s\nvs\n%s", one.Bytes(), two.Bytes())
		}
		// A valid plan runs to the end under unit costs too.
		if _, err := unitExec(p); err != nil {
			t.Fatalf("valid plan does not run: %v", err)
		}
	})
}

// skipPlan builds a hand-made skipping plan: stage s on worker s, the head
// on stage 0, microbatch i taking paths[i] (stages, origin first), and
// programs that run the microbatches one after another (so they cannot
// deadlock). Rules default to the loosest ones the paths allow.
func skipPlan(ns int, paths [][]int) *Plan {
	p := &Plan{Version: FormatVersion, Schedule: "hand", HeadStage: 0}
	p.Stages = SplitLayers(ns, ns)
	for s := range ns {
		p.Workers = append(p.Workers, Worker{Node: "n" + itoa(s), Stages: []int{s}})
	}
	p.Programs = make([][]Action, ns)
	longest := 0
	for mb, stages := range paths {
		m := Microbatch{Samples: 1, LossWorker: stages[0]}
		for _, s := range stages {
			m.Path = append(m.Path, Hop{Worker: s, Stage: s})
			p.Programs[s] = append(p.Programs[s], F(mb, s))
		}
		p.Programs[stages[0]] = append(p.Programs[stages[0]], L(mb, 0))
		for i := len(stages) - 1; i >= 0; i-- {
			p.Programs[stages[i]] = append(p.Programs[stages[i]], B(mb, stages[i]))
		}
		p.Microbatches = append(p.Microbatches, m)
		longest = max(longest, len(stages))
	}
	for w := range p.Programs {
		p.Programs[w] = append(p.Programs[w], Step())
	}
	p.Skip = &SkipRules{PathStages: longest, MaxSwaps: ns, SwapDistance: ns, MaxJump: ns}
	return p
}

func TestSkipPlanHelperIsValid(t *testing.T) {
	if err := Validate(skipPlan(5, [][]int{{0, 2, 1, 4}, {0, 1, 3, 4}, {0, 3, 2, 4}})); err != nil {
		t.Fatal(err)
	}
}

// TestValidatorRules makes every rule fire once and checks the error
// names the worker, the action (where the rule is about one) and the rule.
func TestValidatorRules(t *testing.T) {
	gen := func(name string, s Spec) *Plan {
		p, err := Generate(name, s)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	for _, tc := range []struct {
		name   string
		plan   func() *Plan
		rule   string
		worker int
		action string // "" when the rule is about a path or the topology
		detail string
	}{
		{"structure: version", func() *Plan { p := gen("gpipe", Spec{Stages: 2, Microbatches: 2}); p.Version = 7; return p }, RuleStructure, -1, "", "version is 7"},
		{"structure: unknown kind", func() *Plan {
			p := gen("gpipe", Spec{Stages: 2, Microbatches: 2})
			p.Programs[1][0].Kind = 42
			return p
		}, RuleStructure, 1, "", "unknown kind"},
		{"structure: stage not held", func() *Plan {
			p := gen("gpipe", Spec{Stages: 2, Microbatches: 2})
			p.Microbatches[1].Path[1].Worker = 0
			return p
		}, RuleStructure, 0, "", "does not hold"},
		{"coverage: missing forward", func() *Plan {
			p := gen("gpipe", Spec{Stages: 2, Microbatches: 2})
			// Drop F0@s1 but keep its loss, so only the forward is missing.
			p.Programs[1] = append([]Action{L(0, 1)}, p.Programs[1][2:]...)
			return p
		}, RuleCoverage, 1, "F0@s1", "missing"},
		{"coverage: duplicate", func() *Plan {
			p := gen("1f1b", Spec{Stages: 2, Microbatches: 2})
			p.Programs[0] = append([]Action{F(0, 0)}, p.Programs[0]...)
			return p
		}, RuleCoverage, 0, "F0@s0", "appears twice"},
		{"coverage: missing backward", func() *Plan {
			p := gen("gpipe", Spec{Stages: 2, Microbatches: 2})
			p.Programs[0] = []Action{F(0, 0), F(1, 0), B(0, 0), Step()}
			return p
		}, RuleCoverage, 0, "B1@s0", "no B or I"},
		{"coverage: I without W", func() *Plan {
			p := gen("zb-h1", Spec{Stages: 2, Microbatches: 2})
			p.Programs[0] = []Action{F(0, 0), F(1, 0), I(0, 0), W(0, 0), I(1, 0), Step()}
			return p
		}, RuleCoverage, 0, "W1@s0", "I without W"},
		{"coverage: full and split", func() *Plan {
			p := gen("zb-h1", Spec{Stages: 1, Microbatches: 1})
			p.Programs[0] = []Action{F(0, 0), L(0, 0), I(0, 0), W(0, 0), B(0, 0), Step()}
			return p
		}, RuleCoverage, 0, "B0@s0", "both present"},
		{"coverage: loss twice", func() *Plan {
			p := gen("gpipe", Spec{Stages: 1, Microbatches: 1})
			p.Programs[0] = []Action{F(0, 0), L(0, 0), L(0, 0), B(0, 0), Step()}
			return p
		}, RuleCoverage, 0, "L0@s0", "computed twice"},
		{"coverage: loss on the wrong worker", func() *Plan {
			p := gen("gpipe", Spec{Stages: 2, Microbatches: 1})
			p.Programs[0] = []Action{F(0, 0), L(0, 1), B(0, 0), Step()}
			return p
		}, RuleCoverage, 0, "L0@s1", "belongs on worker 1"},
		{"dependency-order: backward first", func() *Plan {
			p := gen("gpipe", Spec{Stages: 2, Microbatches: 2})
			p.Programs[0] = []Action{B(0, 0), F(0, 0), F(1, 0), B(1, 0), Step()}
			return p
		}, RuleOrder, 0, "B0@s0", "backward before its forward"},
		{"dependency-order: W before I", func() *Plan {
			p := gen("zb-h1", Spec{Stages: 1, Microbatches: 1})
			p.Programs[0] = []Action{F(0, 0), L(0, 0), W(0, 0), I(0, 0), Step()}
			return p
		}, RuleOrder, 0, "W0@s0", "weight gradient before input gradient"},
		{"dependency-order: loss first", func() *Plan {
			p := gen("gpipe", Spec{Stages: 1, Microbatches: 1})
			p.Programs[0] = []Action{L(0, 0), F(0, 0), B(0, 0), Step()}
			return p
		}, RuleOrder, 0, "L0@s0", "loss before the last forward"},
		{"deadlock", func() *Plan {
			p := gen("gpipe", Spec{Stages: 2, Microbatches: 2})
			p.Programs[0] = []Action{F(0, 0), B(0, 0), F(1, 0), B(1, 0), Step()}
			p.Programs[1] = []Action{F(1, 1), L(1, 1), B(1, 1), F(0, 1), L(0, 1), B(0, 1), Step()}
			return p
		}, RuleDeadlock, 0, "B0@s0", "waits forever"},
		{"deadlock: all-reduces crossed", func() *Plan {
			// Two replicas holding stages 0 and 1 all-reduce them in
			// opposite orders: each waits for the other at a barrier.
			p := gen("interleaved", Spec{Stages: 1, Microbatches: 2, Replicas: 2, Chunks: 2})
			prog := p.Programs[1]
			n := len(prog)
			prog[n-3], prog[n-2] = prog[n-2], prog[n-3]
			return p
		}, RuleDeadlock, 0, "R@s1", "all-reduce never completes"},
		{"allreduce: before a backward", func() *Plan {
			p := gen("gpipe", Spec{Stages: 1, Microbatches: 2, Replicas: 2})
			p.Programs[1] = []Action{R(0), F(1, 0), L(1, 0), B(1, 0), Step()}
			return p
		}, RuleAllReduce, 1, "R@s0", "comes before"},
		{"memory", func() *Plan {
			p := gen("gpipe", Spec{Stages: 2, Microbatches: 3, Memory: 2})
			return p
		}, RuleMemory, 0, "F2@s0", "3 activations in flight, memory holds 2"},
		{"allreduce: missing", func() *Plan {
			p := gen("1f1b", Spec{Stages: 2, Microbatches: 4, Replicas: 2})
			prog := p.Programs[3]
			p.Programs[3] = append(append([]Action{}, prog[:len(prog)-2]...), Step())
			return p
		}, RuleAllReduce, 3, "", "never all-reduces"},
		{"allreduce: step not last", func() *Plan {
			p := gen("gpipe", Spec{Stages: 1, Microbatches: 1})
			p.Programs[0] = []Action{F(0, 0), Step(), L(0, 0), B(0, 0), Step()}
			return p
		}, RuleAllReduce, 0, "S", "not the last action"},
		{"allreduce: twice", func() *Plan {
			p := gen("gpipe", Spec{Stages: 1, Microbatches: 2, Replicas: 2})
			prog := p.Programs[0]
			p.Programs[0] = append(append([]Action{}, prog[:len(prog)-1]...), R(0), Step())
			return p
		}, RuleAllReduce, 0, "R@s0", "all-reduced twice"},
		{"skip-path-length: rules", func() *Plan {
			p := skipPlan(4, [][]int{{0, 1, 2}, {0, 2}})
			p.Skip.PathStages = 3
			return p
		}, RuleSkipLength, 0, "F1@s0", "visits 2 stages, every path must visit 3"},
		{"skip-path-length: no rules", func() *Plan {
			p := gen("gpipe", Spec{Stages: 3, Microbatches: 1})
			p.Microbatches[0].Path = p.Microbatches[0].Path[:2]
			return p
		}, RuleSkipLength, -1, "", "has no skip rules"},
		{"skip-origin", func() *Plan { return skipPlan(3, [][]int{{1, 2}}) }, RuleSkipOrigin, 1, "", "starts at stage 1"},
		{"skip-repeat: stage twice", func() *Plan { return skipPlan(4, [][]int{{0, 2, 1, 2}}) }, RuleSkipRepeat, 2, "", "visits stage 2 twice"},
		{"skip-repeat: back to stage 0", func() *Plan {
			p := skipPlan(4, [][]int{{0, 1, 2}})
			p.Workers = append(p.Workers, Worker{Node: "n4", Stages: []int{0}, Replica: 1})
			p.Programs = append(p.Programs, []Action{Step()})
			p.Microbatches[0].Path = append(p.Microbatches[0].Path, Hop{Worker: 4, Stage: 0})
			return p
		}, RuleSkipRepeat, 4, "", "visits stage 0 twice"},
		{"skip-swap: distance", func() *Plan {
			p := skipPlan(4, [][]int{{0, 3, 1}})
			p.Skip.SwapDistance = 1
			return p
		}, RuleSkipSwap, 1, "F0@s1", "goes back from stage 3 to 1"},
		{"skip-swap: count", func() *Plan {
			p := skipPlan(5, [][]int{{0, 2, 1, 4, 3}})
			p.Skip.MaxSwaps = 1
			return p
		}, RuleSkipSwap, 3, "F0@s3", "swaps 2 times, at most 1"},
		{"skip-swap: no rules", func() *Plan {
			p := skipPlan(3, [][]int{{0, 2, 1}})
			p.Skip = nil
			return p
		}, RuleSkipSwap, 2, "", "no skip rules"},
		{"skip-jump", func() *Plan {
			p := skipPlan(5, [][]int{{0, 4}})
			p.Skip.MaxJump = 3
			return p
		}, RuleSkipJump, 4, "F0@s4", "jumps from stage 0 to 4, more than 3"},
		{"skip-capacity: worker", func() *Plan {
			p := skipPlan(3, [][]int{{0, 1}, {0, 1}, {0, 2}})
			p.Skip.MaxPerWorker = 1
			return p
		}, RuleSkipCap, 1, "", "2 microbatches pass through it, at most 1"},
	} {
		err := Validate(tc.plan())
		var ve *ValidationError
		if !errors.As(err, &ve) {
			t.Errorf("%s: got %v, want a ValidationError", tc.name, err)
			continue
		}
		if ve.Rule != tc.rule || ve.Worker != tc.worker || ve.Action != tc.action || !strings.Contains(ve.Detail, tc.detail) {
			t.Errorf("%s: got rule %q worker %d action %q (%v), want rule %q worker %d action %q saying %q",
				tc.name, ve.Rule, ve.Worker, ve.Action, err, tc.rule, tc.worker, tc.action, tc.detail)
		}
		msg := err.Error()
		if !strings.Contains(msg, tc.rule) || (tc.worker >= 0 && !strings.Contains(msg, "worker "+itoa(tc.worker))) || (tc.action != "" && !strings.Contains(msg, "action "+tc.action)) {
			t.Errorf("%s: message %q does not name worker, action and rule", tc.name, msg)
		}
	}
}

// TestDecodeRejectsHostileInput: malformed or oversized plans give errors.
func TestDecodeRejectsHostileInput(t *testing.T) {
	for _, tc := range []struct{ name, in, want string }{
		{"empty", ``, "plan JSON"},
		{"not an object", `[]`, "plan JSON"},
		{"syntax", `{"version":1,`, "plan JSON"},
		{"unknown field", `{"version":1,"bogus":2}`, "unknown field"},
		{"trailing", `{"version":1} {}`, "trailing data"},
		{"bad kind", `{"version":1,"programs":[[{"op":"X","mb":0,"stage":0}]]}`, "unknown action kind"},
		{"wrong type", `{"version":"1"}`, `field "version"`},
		{"no stages", `{"version":1}`, "stages: have 0"},
		{"huge ints", `{"version":1,"stages":[{"first_layer":0,"layers":99999999999999999999}]}`, "plan JSON"},
	} {
		_, err := DecodeBytes([]byte(tc.in))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want an error containing %q", tc.name, err, tc.want)
		}
	}
}
