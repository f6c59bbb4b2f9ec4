package policy

import (
	"reflect"
	"testing"
)

// A SkipPipe plan of 3 stages: a (origin) on stage 0; b, c on stage 1;
// d on stage 2.
func skipPlan() Placement {
	return Placement{Workers: []string{"a", "b", "c", "d"}, StageWorkers: [][]int{{0}, {1, 2}, {3}}}
}

func TestSettle(t *testing.T) {
	for _, k := range []struct {
		f                  Family
		live, want, stages int
		n                  int
		ok                 bool
	}{
		{Classic, 8, 8, 4, 8, true},
		{Classic, 9, 8, 4, 8, true},
		{Classic, 7, 8, 4, 4, true}, // a whole replica of the pipeline
		{Classic, 3, 8, 4, 0, false},
		{SkipPipe, 7, 8, 4, 7, true}, // one per stage is enough
		{SkipPipe, 3, 8, 4, 3, false},
		{SkipPipe, 0, 8, 1, 0, false},
	} {
		n, ok := Settle(k.f, k.live, k.want, k.stages)
		if ok != k.ok || (ok && n != k.n) {
			t.Errorf("Settle(%v, live %d, want %d, stages %d) = %d, %v; want %d, %v", k.f, k.live, k.want, k.stages, n, ok, k.n, k.ok)
		}
	}
}

func TestPrefer(t *testing.T) {
	got := Prefer([]string{"e", "a", "d", "b", "c"}, map[string]bool{"d": true, "e": true}, 3)
	if want := []string{"a", "d", "e"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("Prefer = %v, want %v (plan workers d, e first, then a by name; sorted)", got, want)
	}
	if got := Prefer([]string{"b", "a"}, nil, 5); !reflect.DeepEqual(got, []string{"a", "b"}) {
		t.Fatalf("n beyond len: %v", got)
	}
}

func TestPartition(t *testing.T) {
	p := skipPlan()
	// d (stage 2) is gone: a newcomer x fills the vacant stage, y then
	// goes where the stage is furthest below its size.
	got := Partition(p, []string{"a", "b", "c", "x", "y"}, []int{1, 2, 2})
	want := [][]string{{"a"}, {"b", "c"}, {"x", "y"}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("Partition = %v, want %v", got, want)
	}
	// Ties go to the lowest stage (origins carry the data).
	got = Partition(p, []string{"a", "b", "c", "d", "x"}, []int{2, 3, 2})
	if want := [][]string{{"a", "x"}, {"b", "c"}, {"d"}}; !reflect.DeepEqual(got, want) {
		t.Fatalf("tie: Partition = %v, want %v", got, want)
	}
}

func TestRejoin(t *testing.T) {
	// Classic, 4 stages, 8 wanted, 4 in the plan: 3 ready make 7, not a
	// whole pipeline more: no change; 4 ready do.
	if got := Rejoin(Classic, []string{"a", "b", "c", "d"}, []string{"e", "f", "g"}, 8, 4); got != nil {
		t.Fatalf("3 of 4 newcomers changed the plan: %v", got)
	}
	got := Rejoin(Classic, []string{"b", "c", "d", "e"}, []string{"a", "f", "g", "h"}, 8, 4)
	if want := []string{"a", "b", "c", "d", "e", "f", "g", "h"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("classic rejoin = %v, want %v", got, want)
	}
	// SkipPipe takes newcomers one by one, up to want, plan workers first.
	got = Rejoin(SkipPipe, []string{"a", "b", "c"}, []string{"x", "y"}, 4, 3)
	if want := []string{"a", "b", "c", "x"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("skippipe rejoin = %v, want %v", got, want)
	}
	if got := Rejoin(SkipPipe, []string{"a", "b", "c", "d"}, []string{"x"}, 4, 3); got != nil {
		t.Fatalf("a full plan changed: %v", got)
	}
}
