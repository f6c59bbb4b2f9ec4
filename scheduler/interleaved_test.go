package scheduler

import (
	"strings"
	"testing"
)

func TestInterleavedValidatesEverywhere(t *testing.T) {
	for v := 1; v <= 4; v++ {
		for p := 1; p <= 8; p++ {
			for _, m := range []int{1, 2, p - 1, p, p + 1, 2*p - 1, 2 * p, 3*p + 2} {
				if m < 1 {
					continue
				}
				for _, nr := range []int{1, 2} {
					s := Spec{Stages: p, Microbatches: m, Chunks: v, Replicas: nr, Layers: 3 * p * v}
					plan := mustGenerate(t, "interleaved", s)
					if len(plan.Stages) != p*v || len(plan.Workers) != p*nr || plan.HeadStage != p*v-1 {
						t.Fatalf("%+v: %d stages, %d workers, head %d", s, len(plan.Stages), len(plan.Workers), plan.HeadStage)
					}
					for w, wk := range plan.Workers {
						for c, st := range wk.Stages {
							if st != c*p+w/nr {
								t.Fatalf("%+v: worker %d holds %v, want rank r holding r, r+p, ...", s, w, wk.Stages)
							}
						}
					}
					if nr > 1 {
						// Every replica pipeline runs its share in the same time.
						local := (m + nr - 1) / nr
						want := 3 * (float64(max(local, p)) + float64(min(local, p)-1)/float64(v))
						if v == 1 {
							want = 3 * float64(local+p-1)
						}
						if r := unitRun(t, plan); !near(r.makespan(), want) {
							t.Fatalf("%+v: %v, want %v", s, r.makespan(), want)
						}
					}
				}
			}
		}
	}
}

func TestInterleavedDefaultsAndOneChunk(t *testing.T) {
	plan := mustGenerate(t, "interleaved", Spec{Stages: 4, Microbatches: 8})
	if len(plan.Workers[0].Stages) != 2 {
		t.Fatalf("default chunks: worker 0 holds %v, want 2 chunks", plan.Workers[0].Stages)
	}
	one := mustGenerate(t, "interleaved", Spec{Stages: 4, Microbatches: 8, Chunks: 1})
	ref := mustGenerate(t, "1f1b", Spec{Stages: 4, Microbatches: 8})
	one.Schedule = ref.Schedule
	if !samePlanJSON(t, one, ref) {
		t.Fatal("interleaved with one chunk differs from 1f1b")
	}
}

// TestInterleavedOrderShape pins the order of a small case against the
// Megatron-LM table: p=2, v=2, m=4 (two groups of two).
func TestInterleavedOrderShape(t *testing.T) {
	plan := mustGenerate(t, "interleaved", Spec{Stages: 2, Microbatches: 4, Chunks: 2})
	var got []string
	for _, a := range plan.Programs[0] {
		got = append(got, a.String())
	}
	// Rank 0 holds stages 0 and 2; warm-up (v-1)*2 + 2(p-1) = 4 forwards.
	want := "F0@s0 F1@s0 F0@s2 F1@s2 F2@s0 B0@s2 F3@s0 B1@s2 F2@s2 B0@s0 F3@s2 B1@s0 B2@s2 B3@s2 B2@s0 B3@s0 S"
	if strings.Join(got, " ") != want {
		t.Fatalf("rank 0 runs\n%s\nwant\n%s", strings.Join(got, " "), want)
	}
}

func TestInterleavedGroups(t *testing.T) {
	for _, tc := range []struct {
		p, m int
		want string
	}{
		{4, 8, "[4 4]"}, {4, 9, "[5 4]"}, {4, 11, "[6 5]"}, {4, 3, "[3]"}, {4, 4, "[4]"}, {4, 7, "[7]"}, {1, 3, "[1 1 1]"},
	} {
		if got := sprintInts(interleavedGroups(tc.p, tc.m)); got != tc.want {
			t.Errorf("p=%d m=%d: groups %s, want %s", tc.p, tc.m, got, tc.want)
		}
	}
}

func sprintInts(xs []int) string {
	var b strings.Builder
	b.WriteByte('[')
	for i, x := range xs {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(itoa(x))
	}
	b.WriteByte(']')
	return b.String()
}

func TestInterleavedRejectsBadSpecs(t *testing.T) {
	for _, s := range []Spec{
		{Stages: 0, Microbatches: 4},
		{Stages: 4, Microbatches: 0},
		{Stages: 4, Microbatches: 4, Chunks: -1},
		{Stages: 4, Microbatches: 4, Chunks: 2, Layers: 7},
		{Stages: 2048, Microbatches: 4, Chunks: 4},
	} {
		if _, err := Generate("interleaved", s); err == nil || !strings.HasPrefix(err.Error(), "interleaved: ") {
			t.Errorf("%+v: got %v, want an interleaved: error", s, err)
		}
	}
}
