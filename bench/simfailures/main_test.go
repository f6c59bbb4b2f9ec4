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
		t.Fatalf("lost %v s, want 3 (gaps of 4 s and 1 s less two 1 s median steps)", got)
	}
	// A crash after step 4's iteration but before its commit: the cost
	// shows in the next gap.
	late := []float64{1, 2, 3, 4, 5, 9, 10, 11, 12, 13}
	if got := lostPerCrash(late, []float64{4.99}); math.Abs(got-3) > 1e-9 {
		t.Fatalf("crash before a commit: lost %v s, want 3", got)
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
