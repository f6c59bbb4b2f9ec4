package pytorchcsv

import (
	"bytes"
	"errors"
	"strconv"
	"strings"
	"testing"

	"stagecoach/scheduler"
)

// TestPyTorchCSVRoundTrip exports every registered schedule in both
// dialects, imports it back and expects the same plan (up to its name)
// and the same CSV again.
func TestRoundTrip(t *testing.T) {
	for _, name := range scheduler.Names() {
		for _, sp := range []scheduler.Spec{
			{Stages: 1, Microbatches: 1},
			{Stages: 4, Microbatches: 8},
			{Stages: 4, Microbatches: 6},
			{Stages: 5, Microbatches: 3},
			{Stages: 3, Microbatches: 7, Chunks: 3},
		} {
			if sp.Chunks > 1 && (name == "zb-h1" || name == "zb-h2" || !strings.HasPrefix(name, "interleaved") && name != "looped-bfs") {
				continue
			}
			plan, err := scheduler.Generate(name, sp)
			if err != nil {
				t.Fatalf("%s %+v: %v", name, sp, err)
			}
			mapping := StageRanks(plan)
			for _, d := range []Dialect{DialectNew, DialectOld} {
				var a bytes.Buffer
				if err := Export(&a, plan, d); err != nil {
					t.Fatalf("%s %+v %s: %v", name, sp, d, err)
				}
				for _, in := range []Dialect{d, DialectAuto} {
					back, err := Import(bytes.NewReader(a.Bytes()), Options{Dialect: in, Mapping: mapping, Name: plan.Schedule, Recompute: plan.Recompute})
					if err != nil {
						t.Fatalf("%s %+v %s (read as %s): %v\n%s", name, sp, d, in, err, a.String())
					}
					if planJSON(t, plan) != planJSON(t, back) {
						t.Fatalf("%s %+v %s: imported plan differs from the exported one", name, sp, d)
					}
					var b bytes.Buffer
					if err := Export(&b, back, d); err != nil {
						t.Fatal(err)
					}
					if !bytes.Equal(a.Bytes(), b.Bytes()) {
						t.Fatalf("%s %+v %s: CSV changed on the round trip:\n%s\nvs\n%s", name, sp, d, a.String(), b.String())
					}
				}
			}
		}
	}
}

// planJSON is p's JSON form: two plans are the same when theirs are.
func planJSON(t *testing.T, p *scheduler.Plan) string {
	t.Helper()
	var b bytes.Buffer
	if err := scheduler.Encode(&b, p); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// The same 2-rank ZB-H1-like schedule in the three spellings PyTorch has
// used; idle steps as empty cells, as PyTorch writes None.
const (
	zbNewCSV = "0F0,0F1,,0I0,0W0,0I1,0W1\n1F0,1I0,1F1,1I1,1W0,1W1\n"
	zbOldCSV = "0F0,0F1,,0B0,0W0,0B1,0W1\n1F0,1B0,1F1,1B1,1W0,1W1\n"
	fullNew  = "0F0,0F1,,0B0,0B1\n1F0,1B0,1F1,1B1\n"
	fullOld  = "0F0,0F1,,0BW0,0BW1\n1F0,1BW0,1F1,1BW1\n"
)

func TestDialects(t *testing.T) {
	for _, tc := range []struct {
		name, csv string
		dialect   Dialect // as given; auto must agree
		split     bool
	}{
		{"new split", zbNewCSV, DialectNew, true},
		{"old split", zbOldCSV, DialectOld, true},
		{"new full", fullNew, DialectNew, false},
		{"old full", fullOld, DialectOld, false},
		{"old single-stage B", fullNew, DialectOld, false}, // old 1F1B wrote B for the whole backward
	} {
		for _, d := range []Dialect{tc.dialect, DialectAuto} {
			plan, err := Import(strings.NewReader(tc.csv), Options{Dialect: d})
			if err != nil {
				t.Fatalf("%s (%s): %v", tc.name, d, err)
			}
			var i, b, w int
			for _, prog := range plan.Programs {
				for _, a := range prog {
					switch a.Kind {
					case scheduler.BackwardInput:
						i++
					case scheduler.Backward:
						b++
					case scheduler.BackwardWeight:
						w++
					}
				}
			}
			if tc.split && (i != 4 || w != 4 || b != 0) || !tc.split && (b != 4 || i+w != 0) {
				t.Errorf("%s (%s): %d I, %d W, %d B", tc.name, d, i, w, b)
			}
			if len(plan.Workers) != 2 || len(plan.Microbatches) != 2 || plan.HeadStage != 1 {
				t.Errorf("%s: topology %d workers %d microbatches head %d", tc.name, len(plan.Workers), len(plan.Microbatches), plan.HeadStage)
			}
			if got := plan.Programs[1][1]; got != scheduler.L(0, 1) {
				t.Errorf("%s: loss not inserted after the last stage's forward: %v", tc.name, plan.Programs[1])
			}
		}
	}
}

func TestTokensSkippedAndGrouped(t *testing.T) {
	// Communication, sharding and reduce actions are implied by the plan;
	// an overlap group runs its actions in order; None and spaces are idle.
	in := "0UNSHARD, 0F0 ,0SEND_F0,0F1,0SEND_F1,None,0RECV_B0,0B0,0RECV_B1,0B1,0REDUCE_GRAD,0RESHARD\n" +
		"1RECV_F0,1F0,1B0,1SEND_B0,1RECV_F1,(1F1;1B1)OVERLAP_F_B,1SEND_B1,1SEND_F0_0RECV_B1\n"
	plan, err := Import(strings.NewReader(in), Options{})
	if err != nil {
		t.Fatal(err)
	}
	want := []scheduler.Action{scheduler.F(0, 1), scheduler.L(0, 1), scheduler.B(0, 1), scheduler.F(1, 1), scheduler.L(1, 1), scheduler.B(1, 1), scheduler.Step()}
	if got := plan.Programs[1]; len(got) != len(want) {
		t.Fatalf("rank 1 program %v, want %v", got, want)
	} else {
		for k := range want {
			if got[k] != want[k] {
				t.Fatalf("rank 1 program %v, want %v", got, want)
			}
		}
	}
}

func TestMappings(t *testing.T) {
	// A V-shaped 2-rank, 4-stage plan: rank 0 holds stages 0 and 3.
	v := "0F0,1F0,2F0,3F0,3B0,2B0,1B0,0B0\n"
	vrows := "0F0,3F0,3B0,0B0\n1F0,2F0,2B0,1B0\n"
	if _, err := Import(strings.NewReader(vrows), Options{}); err == nil {
		t.Fatal("loop mapping accepted a V-shaped file")
	} else {
		var ce *Error
		if !errors.As(err, &ce) || ce.Row != 1 || ce.Column != 2 || ce.Token != "3F0" {
			t.Fatalf("want an error at row 1 column 2 token 3F0, got %v", err)
		}
	}
	for _, m := range []StageMapping{MappingV, MappingInfer} {
		plan, err := Import(strings.NewReader(vrows), Options{Mapping: m})
		if err != nil {
			t.Fatalf("%s: %v", m, err)
		}
		if got := plan.Workers[0].Stages; len(got) != 2 || got[0] != 0 || got[1] != 3 {
			t.Fatalf("%s: rank 0 holds %v, want [0 3]", m, got)
		}
		if StageRanks(plan) != MappingV {
			t.Fatalf("%s: mapping of the imported plan read as %s", m, StageRanks(plan))
		}
	}
	// One rank holding everything.
	if _, err := Import(strings.NewReader(v), Options{}); err != nil {
		t.Fatal(err)
	}
}

func TestErrors(t *testing.T) {
	for _, tc := range []struct {
		name, csv string
		opts      Options
		row, col  int
		token     string
		detail    string
	}{
		{"syntax", "0F0,0X1\n", Options{}, 1, 2, "0X1", "unknown computation type"},
		{"no microbatch", "0F0,0F\n", Options{}, 1, 2, "0F", "names no microbatch"},
		{"trailing junk", "0F0,0B0x\n", Options{}, 1, 2, "0B0x", "unexpected"},
		{"huge number", "0F0,0B99999999999\n", Options{}, 1, 2, "0B99999999999", "too large"},
		{"duplicate", "0F0,0F0,0B0\n", Options{}, 1, 2, "0F0", "repeats the action of row 1, column 1"},
		{"mixed dialects", "0F0,0I0,0W0\n1F0,1BW0\n", Options{}, 2, 2, "1BW0", "mixes"},
		{"BW in new", "0F0,0BW0\n", Options{Dialect: DialectNew}, 1, 2, "0BW0", "old dialect"},
		{"I in old", "0F0,0I0,0W0\n", Options{Dialect: DialectOld}, 1, 2, "0I0", "new dialect"},
		{"wrong rank", "0F0,1F0,1B0,0B0\n,\n", Options{}, 1, 2, "1F0", "stage 1 belongs to rank 1 (row 2) under the loop mapping"},
		{"two ranks", "0F0,1F0,0B0\n1B0\n", Options{Mapping: MappingInfer}, 2, 1, "1B0", "stage 1 also runs on row 1"},
		{"backward first", "0B0,0F0\n", Options{}, 1, 1, "0B0", "dependency-order"},
		{"deadlock", "0F0,0B0,0F1,0B1\n1F1,1B1,1F0,1B0\n", Options{}, 1, 2, "0B0", "deadlock"},
		{"bad group", "(0F0;0B0)OVERLAP\n", Options{}, 1, 1, "(0F0;0B0)OVERLAP", "OVERLAP_F_B"},
	} {
		_, err := Import(strings.NewReader(tc.csv), tc.opts)
		if err == nil {
			t.Errorf("%s: accepted", tc.name)
			continue
		}
		msg := err.Error()
		var ce *Error
		if errors.As(err, &ce) {
			if ce.Row != tc.row || ce.Column != tc.col || ce.Token != tc.token {
				t.Errorf("%s: error at row %d column %d token %q, want %d %d %q: %v", tc.name, ce.Row, ce.Column, ce.Token, tc.row, tc.col, tc.token, err)
			}
		} else if want := "row " + strconv.Itoa(tc.row) + ", column " + strconv.Itoa(tc.col) + ", token \"" + tc.token + "\""; !strings.Contains(msg, want) {
			t.Errorf("%s: %q does not name %s", tc.name, msg, want)
		}
		if !strings.Contains(msg, tc.detail) {
			t.Errorf("%s: %q does not say %q", tc.name, msg, tc.detail)
		}
	}
	// Errors that are about the file, not one cell.
	for _, tc := range []struct{ name, csv, detail string }{
		{"empty", "", "no rows"},
		{"idle only", ",,\n", "no compute action"},
		{"missing forward", "0F0,0B0,0B1\n", "never runs the forward of microbatch 1"},
		{"uneven stages", "0F0,0B0\n,\n", "1 stages do not divide over 2 ranks"},
		{"quote", "0F0,\"0B0\n", "line 1"},
	} {
		_, err := Import(strings.NewReader(tc.csv), Options{})
		if err == nil || !strings.Contains(err.Error(), tc.detail) {
			t.Errorf("%s: got %v, want an error saying %q", tc.name, err, tc.detail)
		}
	}
}

func TestExportRefuses(t *testing.T) {
	plan, _ := scheduler.Generate("1f1b", scheduler.Spec{Stages: 2, Microbatches: 2, Replicas: 2})
	if err := Export(&bytes.Buffer{}, plan, DialectNew); err == nil || !strings.Contains(err.Error(), "held by 2 workers") {
		t.Fatalf("replicated plan: %v", err)
	}
	plan, _ = scheduler.Generate("1f1b", scheduler.Spec{Stages: 2, Microbatches: 2})
	if err := Export(&bytes.Buffer{}, plan, DialectAuto); err == nil {
		t.Fatal("exported in the auto dialect")
	}
	var b bytes.Buffer
	if err := Export(&b, plan, DialectNew); err != nil {
		t.Fatal(err)
	}
	if want := "0F0,0F1,0B0,0B1\n1F0,1B0,1F1,1B1\n"; b.String() != want {
		t.Fatalf("1f1b p=2 m=2 exported as\n%s\nwant\n%s", b.String(), want)
	}
}

// The V schedules (zb-v and its workbench relatives, dualpipe-v) put
// worker i on stages i and 2p-1-i, which StageRanks reads as the v
// mapping.
func TestStageRanksOfTheVSchedules(t *testing.T) {
	for _, name := range []string{"zb-v", "v-half", "v-min", "dualpipe-v"} {
		for p := 2; p <= 6; p++ {
			plan, err := scheduler.Generate(name, scheduler.Spec{Stages: p, Microbatches: 2 * p})
			if err != nil {
				t.Fatal(err)
			}
			if got := StageRanks(plan); got != MappingV {
				t.Fatalf("%s p=%d: PyTorch mapping %s, want v", name, p, got)
			}
		}
	}
}

// PyTorch writes an overlapped pair as "(sFm;sIn)OVERLAP_F_B" (its
// DualPipeV schedule); dualpipe-v exports its pairs that way and reads
// them back as overlapped actions.
func TestOverlapGroups(t *testing.T) {
	plan, err := scheduler.Generate("dualpipe-v", scheduler.Spec{Stages: 3, Microbatches: 9})
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := Export(&buf, plan, DialectNew); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(buf.String(), ")OVERLAP_F_B") {
		t.Fatalf("no overlap group in the export:\n%s", buf.String())
	}
	back, err := Import(bytes.NewReader(buf.Bytes()), Options{Mapping: MappingV})
	if err != nil {
		t.Fatal(err)
	}
	count := func(p *scheduler.Plan) (n int) {
		for _, prog := range p.Programs {
			for _, a := range prog {
				if a.Kind == scheduler.Overlapped {
					n++
				}
			}
		}
		return n
	}
	if n, m := count(plan), count(back); n == 0 || n != m {
		t.Fatalf("%d overlapped actions exported, %d imported", n, m)
	}
}
