package main

import (
	"math"
	"testing"
)

// Steps of 1 s; a crash at 4.5 s costs the rest of step 5, 2 s of
// recovery and the retried step: step 5 commits at 8 s instead of 5 s.
var commits = []float64{1, 2, 3, 4, 8, 9, 10, 11, 12, 13}

func TestPhases(t *testing.T) {
	got := phases(commits, []float64{4.5})
	want := [3]span{{1, 4}, {4, 6}, {6, 10}}
	if got != want {
		t.Fatalf("phases %v, want %v (before: steps 2-4; window: 5-6; after: 7-10)", got, want)
	}
}

func TestLostPerCrash(t *testing.T) {
	if got := lostPerCrash(commits, []float64{4.5}); math.Abs(got-3) > 1e-9 {
		t.Fatalf("lost %v s, want 3 (a 4 s gap less the 1 s median step)", got)
	}
	if got := lostPerCrash(commits, []float64{20}); got != 0 {
		t.Fatalf("a crash after the last commit: lost %v, want 0 (not counted)", got)
	}
}

func TestProgress(t *testing.T) {
	for _, c := range []struct{ t, want float64 }{{0.5, 0.5}, {4, 4}, {6, 4.5}, {13, 10}, {20, 10}} {
		if got := progress(commits, c.t); math.Abs(got-c.want) > 1e-9 {
			t.Fatalf("progress at %v s: %v steps, want %v", c.t, got, c.want)
		}
	}
}
