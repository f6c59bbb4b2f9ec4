package scheduler

import (
	"errors"
	"strings"
	"testing"
)

// uniformMemory gives every stage of p the same sizes.
func uniformMemory(p *Plan, s StageMemory) []StageMemory {
	out := make([]StageMemory, len(p.Stages))
	for i := range out {
		out[i] = s
	}
	return out
}

func peaksOf(t *testing.T, name string, spec Spec, s StageMemory) []MemoryPeak {
	t.Helper()
	p, err := Generate(name, spec)
	if err != nil {
		t.Fatal(err)
	}
	if err := Validate(p); err != nil {
		t.Fatal(err)
	}
	pk, err := MemoryPeaks(p, uniformMemory(p, s))
	if err != nil {
		t.Fatal(err)
	}
	return pk
}

// The published activation memory of the classic schedules, in bytes
// with a static part of 1000 and 100 per microbatch and stage:
//   - GPipe (Huang et al., "GPipe: Efficient Training of Giant Neural
//     Networks using Pipeline Parallelism", NeurIPS 2019) holds the
//     activations of all m microbatches on every stage at the flush;
//   - 1F1B (PipeDream-Flush: Narayanan et al., "Memory-Efficient
//     Pipeline-Parallel DNN Training", ICML 2021, and "Efficient
//     Large-Scale Language Model Training on GPU Clusters Using
//     Megatron-LM", SC 2021) holds at most p-s microbatches on stage s.
func TestMemoryPeaksMatchThePapers(t *testing.T) {
	sm := StageMemory{Static: 1000, Activations: 100}
	for p := 1; p <= 8; p++ {
		for m := 1; m <= 16; m++ {
			spec := Spec{Stages: p, Microbatches: m}
			for w, pk := range peaksOf(t, "gpipe", spec, sm) {
				if want := 1000 + 100*float64(m); pk.Bytes != want || pk.Static != 1000 {
					t.Fatalf("gpipe p=%d m=%d worker %d: peak %v (static %v), want %v", p, m, w, pk.Bytes, pk.Static, want)
				}
			}
			for s, pk := range peaksOf(t, "1f1b", spec, sm) {
				if want := 1000 + 100*float64(min(p-s, m)); pk.Bytes != want {
					t.Fatalf("1f1b p=%d m=%d stage %d: peak %v, want %v", p, m, s, pk.Bytes, want)
				}
			}
		}
	}
}

// Recomputation (Chen et al., "Training Deep Nets with Sublinear Memory
// Cost", 2016, as GPipe applies it) keeps only each microbatch's stage
// input until its backward, which recomputes the rest of one microbatch's
// activations: m inputs plus one full set at the peak.
func TestMemoryRecomputeHoldsInputsThenOneFullSet(t *testing.T) {
	sm := StageMemory{Static: 1000, Activations: 100, Input: 10}
	for _, p := range []int{1, 3, 4} {
		for _, m := range []int{1, 4, 9} {
			for w, pk := range peaksOf(t, "gpipe-recompute", Spec{Stages: p, Microbatches: m}, sm) {
				// The recomputed set shares the input already held.
				if want := 1000 + 10*float64(m) + 90; pk.Bytes != want {
					t.Fatalf("p=%d m=%d worker %d: peak %v, want %v", p, m, w, pk.Bytes, want)
				}
			}
		}
	}
}

// The loss holds the logits while it runs: on 1F1B's last stage, one
// microbatch's activations plus its loss.
func TestMemoryLossIsHeldWhileItRuns(t *testing.T) {
	pk := peaksOf(t, "1f1b", Spec{Stages: 4, Microbatches: 8}, StageMemory{Activations: 100, Loss: 7})
	if got := pk[3].Bytes; got != 107 {
		t.Fatalf("last stage peak %v, want 100 + 7", got)
	}
	if got := pk[0].Bytes; got != 400 {
		t.Fatalf("stage 0 peak %v, want 4 x 100 (the loss is on the last stage)", got)
	}
}

// With activations of one byte the byte count is the microbatch count
// every schedule's machine keeps (Machine.PeakInFlight): the two
// accountings agree on when activations are taken and freed, a deferred W
// included (it keeps the whole set when WeightGrad equals Activations).
func TestMemoryBytesAgreeWithTheActivationCount(t *testing.T) {
	for _, name := range Names() {
		spec := Spec{Stages: 4, Microbatches: 8}
		p, err := Generate(name, spec)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		ix := NewIndex(p)
		ms := make([]*Machine, len(p.Workers))
		for w := range ms {
			ms[w] = NewMachine(ix, w)
		}
		if st, err := Execute(ix, ms); err != nil || st != nil {
			t.Fatalf("%s: %v %v", name, st, err)
		}
		pk, err := MemoryPeaks(p, uniformMemory(p, StageMemory{Activations: 1, Input: 1, WeightGrad: 1}))
		if err != nil {
			t.Fatal(err)
		}
		for w := range ms {
			if int(pk[w].Bytes) != ms[w].PeakInFlight() {
				t.Errorf("%s worker %d: %v bytes, %d activations", name, w, pk[w].Bytes, ms[w].PeakInFlight())
			}
		}
	}
}

// A deferred weight gradient keeps only what it needs: with W's inputs at
// 40 of 100, ZB-H1 (Qi et al., "Zero Bubble Pipeline Parallelism", ICLR
// 2024) peaks at 1F1B's memory, p microbatches on stage 0, while its
// later stages, which hold W-pending microbatches, stay below it.
func TestMemoryZeroBubbleDeferredWeightGradient(t *testing.T) {
	sm := StageMemory{Activations: 100, WeightGrad: 40}
	for p := 2; p <= 6; p++ {
		spec := Spec{Stages: p, Microbatches: 3 * p}
		zb := peaksOf(t, "zb-h1", spec, sm)
		ofb := peaksOf(t, "1f1b", spec, sm)
		if zb[0].Bytes != ofb[0].Bytes || zb[0].Bytes != 100*float64(p) {
			t.Fatalf("p=%d: zb-h1 stage 0 peak %v, 1f1b %v, want %d", p, zb[0].Bytes, ofb[0].Bytes, 100*p)
		}
		for s := 1; s < p; s++ {
			if zb[s].Bytes < ofb[s].Bytes || zb[s].Bytes > zb[0].Bytes {
				t.Errorf("p=%d stage %d: zb-h1 peak %v, want between 1f1b's %v and stage 0's %v", p, s, zb[s].Bytes, ofb[s].Bytes, zb[0].Bytes)
			}
		}
	}
}

func TestValidateMemoryNamesWorkerActionAndBytesOver(t *testing.T) {
	p, err := Generate("gpipe", Spec{Stages: 2, Microbatches: 4})
	if err != nil {
		t.Fatal(err)
	}
	stages := uniformMemory(p, StageMemory{Static: 1 << 30, Activations: 1 << 29})
	// Worker 0 needs 1 GiB + 4 x 0.5 GiB = 3 GiB at its last forward.
	if err := ValidateMemory(p, stages, []float64{3 << 30, 3 << 30}); err != nil {
		t.Fatalf("3 GiB fits exactly: %v", err)
	}
	err = ValidateMemory(p, stages, []float64{2.5 * (1 << 30), 0})
	var ve *ValidationError
	if !errors.As(err, &ve) || ve.Rule != RuleMemory || ve.Worker != 0 || ve.Action != "F3@s0" {
		t.Fatalf("got %v, want a memory error at worker 0 action F3@s0", err)
	}
	if want := "needs 3.00 GiB at action 3 of its program, 512 MiB over its 2.50 GiB"; !strings.Contains(err.Error(), want) {
		t.Errorf("%q lacks %q", err, want)
	}
	err = ValidateMemory(p, stages, []float64{0, 1 << 29})
	if !errors.As(err, &ve) || ve.Worker != 1 || !strings.Contains(err.Error(), "needs 1.00 GiB for parameters, gradients and optimizer state alone, 512 MiB over its 512 MiB") {
		t.Errorf("static over capacity: %v", err)
	}
	if err := ValidateMemory(p, stages[:1], []float64{1}); err == nil || !strings.Contains(err.Error(), "1 stage sizes for a plan of 2 stages") {
		t.Errorf("wrong stage count: %v", err)
	}
	bad := uniformMemory(p, StageMemory{Activations: -1})
	if _, err := MemoryPeaks(p, bad); err == nil || !strings.Contains(err.Error(), "stage 0 sizes") {
		t.Errorf("negative size: %v", err)
	}
}

func TestFormatBytes(t *testing.T) {
	for b, want := range map[float64]string{0: "0 B", 512: "512 B", 1536: "1.50 KiB", 12.5 * (1 << 20): "12.5 MiB", 300 << 30: "300 GiB"} {
		if got := FormatBytes(b); got != want {
			t.Errorf("FormatBytes(%v) = %q, want %q", b, got, want)
		}
	}
}
