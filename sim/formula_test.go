package sim

import (
	"math"
	"testing"

	"stagecoach/scheduler"
)

// unitCluster prices a stage's forward at 1 and backward at 2, with free
// communication: the setting of the closed forms in DESIGN section 4.
func unitCluster() *Cluster {
	return &Cluster{Name: "unit", AnyNode: true, Compute: Compute{LayerForwardS: 1, BackwardRatio: 2}}
}

func TestBubbleFormulaGPipeAnd1F1B(t *testing.T) {
	for _, name := range []string{"gpipe", "1f1b"} {
		for p := 1; p <= 16; p++ {
			for m := 1; m <= 64; m++ {
				plan, err := scheduler.Generate(name, scheduler.Spec{Stages: p, Microbatches: m})
				if err != nil {
					t.Fatal(err)
				}
				r, err := Run(plan, unitCluster(), Options{})
				if err != nil {
					t.Fatalf("%s p=%d m=%d: %v", name, p, m, err)
				}
				want := float64(p-1) / float64(m+p-1)
				if math.Abs(r.BubbleFraction-want) > 1e-9 {
					t.Fatalf("%s p=%d m=%d: bubble_fraction %.12f, want %.12f", name, p, m, r.BubbleFraction, want)
				}
				if wantT := 3 * float64(m+p-1); math.Abs(r.IterationTimeS-wantT) > 1e-9 {
					t.Fatalf("%s p=%d m=%d: iteration %.6f, want %.6f", name, p, m, r.IterationTimeS, wantT)
				}
				if wantO := float64(p-1) / float64(m); math.Abs(r.BubbleOverIdeal-wantO) > 1e-9 {
					t.Fatalf("%s p=%d m=%d: bubble_over_ideal %.12f, want %.12f", name, p, m, r.BubbleOverIdeal, wantO)
				}
				wantPeak := m
				if name == "1f1b" {
					wantPeak = min(p, m)
				}
				if r.PeakActivations != wantPeak {
					t.Fatalf("%s p=%d m=%d: peak %d want %d", name, p, m, r.PeakActivations, wantPeak)
				}
			}
		}
	}
}

func TestRecomputeCostsOneMoreForward(t *testing.T) {
	for p := 1; p <= 8; p++ {
		for _, m := range []int{1, 5, 16} {
			plan, _ := scheduler.Generate("gpipe-recompute", scheduler.Spec{Stages: p, Microbatches: m})
			r, err := Run(plan, unitCluster(), Options{})
			if err != nil {
				t.Fatal(err)
			}
			if want := 4 * float64(m+p-1); math.Abs(r.IterationTimeS-want) > 1e-9 {
				t.Fatalf("p=%d m=%d: iteration %.6f, want 4(m+p-1) = %.6f", p, m, r.IterationTimeS, want)
			}
		}
	}
}

func TestMultiIterationBarrier(t *testing.T) {
	plan, _ := scheduler.Generate("1f1b", scheduler.Spec{Stages: 4, Microbatches: 8})
	one, _ := Run(plan, unitCluster(), Options{})
	three, err := Run(plan, unitCluster(), Options{Iterations: 3})
	if err != nil {
		t.Fatal(err)
	}
	if math.Abs(three.MakespanS-3*one.MakespanS) > 1e-9 {
		t.Fatalf("3 iterations with a barrier took %.3f, want 3 x %.3f", three.MakespanS, one.MakespanS)
	}
	over, err := Run(plan, unitCluster(), Options{Iterations: 3, Overlap: true})
	if err != nil {
		t.Fatal(err)
	}
	if over.MakespanS > three.MakespanS+1e-9 {
		t.Fatalf("overlapped iterations took %.3f, more than %.3f with barriers", over.MakespanS, three.MakespanS)
	}
}

func BenchmarkGPipe64x4096(b *testing.B) {
	plan, err := scheduler.Generate("gpipe", scheduler.Spec{Stages: 64, Microbatches: 4096})
	if err != nil {
		b.Fatal(err)
	}
	c := unitCluster()
	var events int64
	b.ResetTimer()
	for b.Loop() {
		r, err := Run(plan, c, Options{})
		if err != nil {
			b.Fatal(err)
		}
		events = r.Events
	}
	b.ReportMetric(float64(events)*float64(b.N)/b.Elapsed().Seconds(), "events/s")
}

func TestRunRefusesNilPlanOrCluster(t *testing.T) {
	p, err := scheduler.Generate("gpipe", scheduler.Spec{Stages: 2, Microbatches: 2})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Run(p, nil, Options{}); err == nil {
		t.Error("nil cluster: no error")
	}
	if _, err := Run(nil, Homogeneous(), Options{}); err == nil {
		t.Error("nil plan: no error")
	}
}
