package skippiperef

import (
	"fmt"
	"strings"
	"testing"

	"stagecoach/scheduler"
)

// tinyRef is a hand-made file in the authors' format: 4 nodes, stages
// [[0,1],[2],[3]], two origins with one agent each.
const tinyRef = `{"partitions": [[0, 1], [2], [3]],
 "delays": [[0, 1, 0.5, 2], [1, 0, 2, 0.5], [0.5, 2, 0, 1], [2, 0.5, 1, 0]],
 "memory": 4, "ours-sends": 2, "locations": ["A", "B", "C", "D"],
 "baseline-expected-time": 20,
 "ca-paths": {"0": {"0": 2, "2": 3}, "1": {"1": 3, "3": 2}},
 "ca-expected-time": 10,
 "non-ca-paths": {"0": {"0": 2, "2": 3}, "1": {"0": 3, "3": 2}, "2": {"1": 2, "2": 3}, "3": {"1": 3, "3": 2}},
 "non-ca-processing-order": {"0": [[0, 0], [1, 0.1], [0, 5], [1, 5.2], [0, 9], [1, 9.1]], "2": [[0, 1], [2, 2], [1, 4], [0, 6], [2, 7], [1, 8]]},
 "random-paths": {"7": {"1": 2, "2": 3}, "8": {"0": 3, "3": 2}},
 "random-processing-order": {"0": 2, "1": 2}}`

func TestImportTinyFile(t *testing.T) {
	ref, err := Parse([]byte(tinyRef))
	if err != nil {
		t.Fatal(err)
	}
	if len(ref.Variants) != 3 {
		t.Fatalf("%d variants, want 3", len(ref.Variants))
	}
	cfg := ref.Config(1)
	if cfg.Memory != 4*1 {
		t.Errorf("memory %d, want 4 agents of 1 microbatch", cfg.Memory)
	}
	want := map[string][][]int{
		"ref-ca":     {{0, 2, 3}, {0, 2, 3}, {1, 3, 2}, {1, 3, 2}},
		"ref-nonca":  {{0, 2, 3}, {0, 3, 2}, {1, 2, 3}, {1, 3, 2}},
		"ref-random": {{1, 2, 3}, {1, 2, 3}, {0, 3, 2}, {0, 3, 2}},
	}
	for i := range ref.Variants {
		v := &ref.Variants[i]
		plan, notes, err := ref.Plan(v, cfg)
		if err != nil {
			t.Fatalf("%s: %v", v.Name, err)
		}
		var got [][]int
		for _, m := range plan.Microbatches {
			var p []int
			for _, h := range m.Path {
				p = append(p, h.Worker)
			}
			got = append(got, p)
		}
		if g, w := sprint(got), sprint(want[v.Name]); g != w {
			t.Errorf("%s paths %s, want %s", v.Name, g, w)
		}
		if v.Name == "ref-nonca" {
			// Node 0's order is complete in the file and is followed: each
			// agent carries one microbatch here. Node 2's lists only
			// three of its four agents: arrival order, with a note.
			if g, w := sprint(plan.Programs[0]), "[F0@s0 F1@s0 L0@s0 L1@s0 B0@s0 B1@s0 R@s0 S]"; g != w {
				t.Errorf("node 0 program %s, want %s", g, w)
			}
			if !strings.Contains(strings.Join(notes, ";"), "node 2 order covers 6 of its 8 tasks") {
				t.Errorf("notes %v: want one on node 2's incomplete order", notes)
			}
		}
		if v.Name == "ref-random" && len(notes) == 0 {
			t.Errorf("ref-random: no note about its unusable processing order")
		}
	}
	base, err := BaselinePlan(cfg, 1, 3)
	if err != nil {
		t.Fatal(err)
	}
	if err := scheduler.Validate(base); err != nil {
		t.Fatal(err)
	}
}

func sprint(v any) string { return strings.ReplaceAll(strings.TrimSpace(fmtSprint(v)), "\n", " ") }

func TestImportErrorsNameTheField(t *testing.T) {
	for _, tc := range []struct{ edit, field string }{
		{`"memory": 4`, `"memory": 0`},
		{`"ours-sends": 2`, `"ours-sends": "x"`},
		{`"partitions": [[0, 1], [2], [3]]`, `"partitions": [[0, 1], [2], [9]]`},
		{`"delays": [[0, 1, 0.5, 2],`, `"delays": [[0, 1, 0.5],`},
		{`"ca-paths": {"0": {"0": 2, "2": 3}`, `"ca-paths": {"x": {"0": 2, "2": 3}`},
		{`"ca-paths": {"0": {"0": 2, "2": 3}`, `"ca-paths": {"0": {"0": 2, "2": 0}`},
	} {
		bad := strings.Replace(tinyRef, tc.edit, tc.field, 1)
		_, err := Parse([]byte(bad))
		name := tc.field[1 : strings.Index(tc.field[1:], `"`)+1]
		if err == nil || !strings.Contains(err.Error(), name) {
			t.Errorf("%s: error %v, want one naming %q", tc.field, err, name)
		}
	}
	if _, err := Parse([]byte(`[1]`)); err == nil {
		t.Error("array accepted")
	}
	if _, err := Parse([]byte(strings.Replace(tinyRef, `"memory": 4,`, ``, 1))); err == nil || !strings.Contains(err.Error(), `"memory" is missing`) {
		t.Errorf("missing memory: %v", err)
	}
}

// FuzzImportSkipPipe: any input is either refused with an error or yields
// plans that validate; nothing panics.
func FuzzImportSkipPipe(f *testing.F) {
	f.Add([]byte(tinyRef))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		ref, err := Parse(data)
		if err != nil {
			return
		}
		if len(ref.Delays) > 64 {
			return
		}
		cfg := ref.Config(0.5)
		for i := range ref.Variants {
			plan, _, err := ref.Plan(&ref.Variants[i], cfg)
			if err != nil {
				continue
			}
			if err := scheduler.Validate(plan); err != nil {
				t.Fatalf("%s: imported plan does not validate: %v", ref.Variants[i].Name, err)
			}
		}
		if base, err := BaselinePlan(cfg, 1, 2); err == nil {
			if err := scheduler.Validate(base); err != nil {
				t.Fatalf("ref-baseline: %v", err)
			}
		}
	})
}

func fmtSprint(v any) string { return fmt.Sprint(v) }
