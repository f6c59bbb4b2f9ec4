package sim

import (
	"math"
	"strings"
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

// An overlapped forward+backward pair (dualpipe-v) costs F + B -
// fb_overlap*min(F, B): back to back by default (as Stagecoach's workers
// run it), the longer half alone at fb_overlap 1. With F = I = W (input
// and weight gradient ratios 1, a forward of 1 per stage) the simulator
// agrees with the scheduler's unit-cost construction: zb-v at p=8, m=32
// takes 99.5 stage times and dualpipe-v 75.5 with full overlap (the
// worked values of scheduler/workbench_test.go); without overlap
// dualpipe-v is no faster than running its halves in sequence.
func TestOverlappedPairPricing(t *testing.T) {
	spec := scheduler.Spec{Stages: 8, Microbatches: 32}
	run := func(name string, overlap float64) float64 {
		plan, err := scheduler.Generate(name, spec)
		if err != nil {
			t.Fatal(err)
		}
		c := unitCluster()
		c.Compute.FBOverlap = overlap
		r, err := Run(plan, c, Options{})
		if err != nil {
			t.Fatal(err)
		}
		// Stage times: the V's chunks are half a stage each (one layer
		// per chunk at 1 s), so a stage time is 2 s.
		return r.IterationTimeS / 2
	}
	if got := run("zb-v", 0); math.Abs(got-99.5) > 1e-9 {
		t.Errorf("zb-v: %v stage times, want 99.5", got)
	}
	if got := run("dualpipe-v", 1); math.Abs(got-75.5) > 1e-9 {
		t.Errorf("dualpipe-v, full overlap: %v stage times, want 75.5", got)
	}
	none, half := run("dualpipe-v", 0), run("dualpipe-v", 0.5)
	if !(none > half && half > 75.5) {
		t.Errorf("dualpipe-v: %v with no overlap, %v with half, want both above 75.5 and decreasing", none, half)
	}
	c := unitCluster()
	c.Compute.FBOverlap = 1.5
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "fb_overlap") {
		t.Errorf("fb_overlap 1.5: %v, want an error naming it", err)
	}
}
