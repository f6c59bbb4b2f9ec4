package scheduler

import (
	"bytes"
	"errors"
	"testing"
)

func TestClassicPlansValidate(t *testing.T) {
	for _, name := range []string{"gpipe", "gpipe-recompute", "1f1b"} {
		for p := 1; p <= 8; p++ {
			for _, m := range []int{1, 2, 3, 7, 8, 16} {
				for _, nr := range []int{1, 2, 3} {
					plan, err := Generate(name, Spec{Stages: p, Microbatches: m, Replicas: nr})
					if err != nil {
						t.Fatalf("%s p=%d m=%d r=%d: %v", name, p, m, nr, err)
					}
					if err := Validate(plan); err != nil {
						t.Fatalf("%s p=%d m=%d r=%d: %v", name, p, m, nr, err)
					}
				}
			}
		}
	}
}

func TestPeakInFlight(t *testing.T) {
	for p := 1; p <= 8; p++ {
		for _, m := range []int{1, 4, 8, 32} {
			for _, tc := range []struct {
				name string
				want func(rank int) int
			}{
				{"gpipe", func(int) int { return m }},
				{"1f1b", func(r int) int { return min(p-r, m) }},
			} {
				plan, _ := Generate(tc.name, Spec{Stages: p, Microbatches: m})
				ms := make([]*Machine, len(plan.Workers))
				ix := NewIndex(plan)
				for w := range ms {
					ms[w] = NewMachine(ix, w)
				}
				if st, err := Execute(ix, ms); st != nil || err != nil {
					t.Fatalf("%s p=%d m=%d: stuck %v err %v", tc.name, p, m, st, err)
				}
				for r, mc := range ms {
					if got := mc.PeakInFlight(); got != tc.want(r) {
						t.Errorf("%s p=%d m=%d rank %d: peak %d want %d", tc.name, p, m, r, got, tc.want(r))
					}
				}
			}
		}
	}
}

func TestJSONRoundTrip(t *testing.T) {
	for _, name := range Names() {
		plan, err := Generate(name, Spec{Stages: 4, Microbatches: 6, Replicas: 2})
		if err != nil {
			t.Fatal(err)
		}
		var a bytes.Buffer
		if err := Encode(&a, plan); err != nil {
			t.Fatal(err)
		}
		back, err := Decode(bytes.NewReader(a.Bytes()))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		var b bytes.Buffer
		if err := Encode(&b, back); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(a.Bytes(), b.Bytes()) {
			t.Fatalf("%s: round trip changed the JSON", name)
		}
	}
}

func TestValidateCatchesDeadlock(t *testing.T) {
	plan, _ := Generate("gpipe", Spec{Stages: 2, Microbatches: 2})
	// Rank 0 waits for the gradient of microbatch 0 before sending
	// microbatch 1, while rank 1 insists on microbatch 1 first.
	plan.Programs[0] = []Action{F(0, 0), B(0, 0), F(1, 0), B(1, 0), Step()}
	plan.Programs[1] = []Action{F(1, 1), L(1, 1), B(1, 1), F(0, 1), L(0, 1), B(0, 1), Step()}
	err := Validate(plan)
	var ve *ValidationError
	if !errors.As(err, &ve) || ve.Rule != RuleDeadlock {
		t.Fatalf("want a deadlock error, got %v", err)
	}
	if ve.Worker != 0 || ve.Action != "B0@s0" {
		t.Errorf("error names worker %d action %s, want worker 0 action B0@s0: %v", ve.Worker, ve.Action, err)
	}
}
