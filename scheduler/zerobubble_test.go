package scheduler

import (
	"strings"
	"testing"
)

func TestZeroBubbleValidatesEverywhere(t *testing.T) {
	for _, name := range []string{"zb-h1", "zb-h2"} {
		for p := 1; p <= 8; p++ {
			for _, m := range []int{1, 2, p - 1, p, p + 1, 2*p + 3} {
				if m < 1 {
					continue
				}
				for _, nr := range []int{1, 2, 3} {
					plan := mustGenerate(t, name, Spec{Stages: p, Microbatches: m, Replicas: nr})
					for w, prog := range plan.Programs {
						var i, wgt, b int
						for _, a := range prog {
							switch a.Kind {
							case BackwardInput:
								i++
							case BackwardWeight:
								wgt++
							case Backward:
								b++
							}
						}
						if b != 0 || i != wgt || (i == 0 && m >= nr) {
							t.Fatalf("%s p=%d m=%d r=%d worker %d: %d I, %d W, %d B", name, p, m, nr, w, i, wgt, b)
						}
					}
				}
			}
		}
	}
}

// TestZBH1DefersWeights checks the shape the paper describes: rank r runs
// the same steady F, I, W rhythm as rank 0 but r microbatches late on W,
// so r+1 weight gradients (the last microbatch's own and r deferred ones)
// are left for the cool-down after its last input gradient.
func TestZBH1DefersWeights(t *testing.T) {
	p, m := 6, 20
	plan := mustGenerate(t, "zb-h1", Spec{Stages: p, Microbatches: m})
	for r, prog := range plan.Programs {
		lastI, tailW := -1, 0
		for k, a := range prog {
			if a.Kind == BackwardInput {
				lastI = k
			}
		}
		for _, a := range prog[lastI+1:] {
			if a.Kind == BackwardWeight {
				tailW++
			}
		}
		if tailW != r+1 {
			t.Errorf("rank %d: %d W after the last I, want %d", r, tailW, r+1)
		}
		warm := 0
		for _, a := range prog {
			if a.Kind != Forward {
				break
			}
			warm++
		}
		if want := p - r; warm != want && !(r == p-1 && warm == 1) {
			t.Errorf("rank %d: %d forwards before the first I, want %d", r, warm, want)
		}
	}
}

func TestZBH1OrderShape(t *testing.T) {
	plan := mustGenerate(t, "zb-h1", Spec{Stages: 3, Microbatches: 4})
	want := []string{
		"F0@s0 F1@s0 F2@s0 I0@s0 W0@s0 F3@s0 I1@s0 W1@s0 I2@s0 W2@s0 I3@s0 W3@s0 S",
		"F0@s1 F1@s1 I0@s1 F2@s1 I1@s1 W0@s1 F3@s1 I2@s1 W1@s1 I3@s1 W2@s1 W3@s1 S",
		"F0@s2 L0@s2 I0@s2 F1@s2 L1@s2 I1@s2 F2@s2 L2@s2 I2@s2 W0@s2 F3@s2 L3@s2 I3@s2 W1@s2 W2@s2 W3@s2 S",
	}
	for r, prog := range plan.Programs {
		var got []string
		for _, a := range prog {
			got = append(got, a.String())
		}
		if strings.Join(got, " ") != want[r] {
			t.Errorf("rank %d runs\n%s\nwant\n%s", r, strings.Join(got, " "), want[r])
		}
	}
}

func TestZeroBubbleRejectsChunks(t *testing.T) {
	for _, name := range []string{"zb-h1", "zb-h2"} {
		if _, err := Generate(name, Spec{Stages: 4, Microbatches: 8, Chunks: 2}); err == nil || !strings.Contains(err.Error(), "one stage per worker") {
			t.Errorf("%s with 2 chunks: %v", name, err)
		}
		if _, err := Generate(name, Spec{Stages: 0, Microbatches: 8}); err == nil {
			t.Errorf("%s with no stages: accepted", name)
		}
	}
}

func TestZeroBubbleDeterministic(t *testing.T) {
	for _, name := range []string{"zb-h1", "zb-h2"} {
		a := mustGenerate(t, name, Spec{Stages: 5, Microbatches: 13, Replicas: 2})
		b := mustGenerate(t, name, Spec{Stages: 5, Microbatches: 13, Replicas: 2})
		if !samePlanJSON(t, a, b) {
			t.Fatalf("%s: two runs differ", name)
		}
	}
}

// A policy that never acts must be reported as a stall, not loop.
func TestListScheduleReportsStall(t *testing.T) {
	ranks := []lsRank{{fwd: []Action{F(0, 0)}, bwd: []Action{B(0, 0)}}}
	_, err := listSchedule(1, 1, ranks, false, 1, 2, 0, func(lsView) lsChoice { return lsWait })
	if err == nil || !strings.Contains(err.Error(), "stalled") {
		t.Fatalf("got %v, want a stall", err)
	}
	// A policy asking for something not ready waits instead.
	out, err := listSchedule(2, 1, []lsRank{
		{fwd: []Action{F(0, 0)}, bwd: []Action{B(0, 0)}},
		{fwd: []Action{F(0, 0)}, bwd: []Action{B(0, 0)}},
	}, false, 1, 2, 0, func(v lsView) lsChoice {
		if v.fNext < v.fTotal {
			return lsF
		}
		return lsB
	})
	if err != nil || len(out[0]) != 2 || len(out[1]) != 2 {
		t.Fatalf("got %v, %v", out, err)
	}
}
