package planner

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"stagecoach/scheduler"
)

var six = []string{"n0", "n1", "n2", "n3", "n4", "n5"}

// job is a 3-stage job on six nodes with a uniform network (no cost
// model): two workers per stage, two replicas for classic schedules.
func job(schedule string) Snapshot {
	return Snapshot{Schedule: schedule, Epoch: 7, Rules: Rules{
		Stages: 3, Workers: 6, Microbatches: 6, Layers: 6, Samples: 1, Seed: 1,
	}}
}

// stagesOf lists, per stage, the nodes of p's workers holding it.
func stagesOf(p *scheduler.Plan) [][]string {
	out := make([][]string, len(p.Stages))
	for s, ws := range p.StageWorkers() {
		for _, w := range ws {
			out[s] = append(out[s], p.Workers[w].Node)
		}
		slices.Sort(out[s])
	}
	return out
}

func plan(t *testing.T, s Snapshot) *scheduler.Plan {
	t.Helper()
	p, err := Plan(s)
	if err != nil {
		t.Fatalf("%s: %v", s.Schedule, err)
	}
	if err := scheduler.Validate(p); err != nil {
		t.Fatalf("%s: invalid plan: %v", s.Schedule, err)
	}
	if p.Epoch != s.Epoch {
		t.Errorf("%s: epoch %d, want %d", s.Schedule, p.Epoch, s.Epoch)
	}
	return p
}

func without(parts [][]string, node string) [][]string {
	out := make([][]string, len(parts))
	for s, ns := range parts {
		for _, n := range ns {
			if n != node {
				out[s] = append(out[s], n)
			}
		}
	}
	return out
}

func TestRegistrySaysWhatEachFamilySupports(t *testing.T) {
	for _, tc := range []struct {
		name string
		want Family
	}{
		{"gpipe", Family{Name: "gpipe", Kind: KindClassic}},
		{"1f1b", Family{Name: "1f1b", Kind: KindClassic}},
		{"skippipe", Family{Name: "skippipe", Kind: KindSkipPipe, variant: "skippipe", Caps: Caps{Repath: true, Vacancy: true, UnequalStages: true, KeepsPlacement: true, NeedsCluster: true}}},
		{"skippipe-nonca", Family{Name: "skippipe-nonca", Kind: KindSkipPipe, variant: "skippipe-nonca", Caps: Caps{Repath: true, Vacancy: true, UnequalStages: true, KeepsPlacement: true, NeedsCluster: true}}},
		{"skippipe-random", Family{Name: "skippipe-random", Kind: KindSkipPipe, variant: "skippipe-random", Caps: Caps{Repath: true, Vacancy: true, UnequalStages: true, KeepsPlacement: true, NeedsCluster: true}}},
		{"skippipe-full", Family{Name: "skippipe-full", Kind: KindSkipPipe, variant: "skippipe-full", Caps: Caps{Repath: true, UnequalStages: true, KeepsPlacement: true, NeedsCluster: true}}},
		{"skippipe-full-greedy", Family{Name: "skippipe-full-greedy", Kind: KindSkipPipe, variant: "skippipe-full-greedy", Caps: Caps{Repath: true, UnequalStages: true, KeepsPlacement: true, NeedsCluster: true}}},
	} {
		got, err := Lookup(tc.name)
		if err != nil || got != tc.want {
			t.Errorf("Lookup(%q) = %+v, %v; want %+v", tc.name, got, err, tc.want)
		}
	}
	for name, want := range map[string]string{
		"gpipe-greedy": `now called "skippipe-full-greedy"`,
		"nope":         "unknown schedule \"nope\" (known: 1f1b,",
	} {
		if _, err := Lookup(name); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Lookup(%q): error %v, want one containing %q", name, err, want)
		}
	}
	names := Names()
	for _, n := range append(scheduler.Names(), SkipPipeNames()...) {
		if !slices.Contains(names, n) {
			t.Errorf("Names() %v lacks %q", names, n)
		}
	}
	if got, note := InSkipPipeList("gpipe"); got != SkipPipeFull || !strings.Contains(note, `write "skippipe-full"`) {
		t.Errorf(`InSkipPipeList("gpipe") = %q, %q`, got, note)
	}
	if got, note := InSkipPipeList("skippipe"); got != "skippipe" || note != "" {
		t.Errorf(`InSkipPipeList("skippipe") = %q, %q`, got, note)
	}
}

// Classic families: a fresh start places workers in member order, a
// restore after a loss plans on whole pipelines only, a rejoin grows the
// replicas back; a fixed placement (re-path, vacancy) is refused.
func TestClassicFamilies(t *testing.T) {
	for _, name := range []string{"gpipe", "1f1b", "interleaved", "zb-h1"} {
		if _, err := Lookup(name); err != nil {
			continue // not every generator is registered in every build
		}
		t.Run(name, func(t *testing.T) {
			s := job(name)
			if name == "interleaved" {
				s.Rules.Layers = 12
			}
			s.Members = six
			fresh := plan(t, s)
			if len(fresh.Workers) != 6 {
				t.Fatalf("fresh: %d workers, want 6", len(fresh.Workers))
			}
			for i, w := range fresh.Workers {
				if w.Node != six[i] {
					t.Errorf("fresh: worker %d on %q, want %q (member order)", i, w.Node, six[i])
				}
			}
			s.Prev = fresh
			s.Members = six[:3] // lost n3..n5: one pipeline left
			if p := plan(t, s); len(p.Workers) != 3 {
				t.Errorf("after a loss: %d workers, want 3", len(p.Workers))
			}
			s.Members = six[:5]
			if _, err := Plan(s); err == nil || !strings.Contains(err.Error(), "5 members are not a whole number of 3-stage pipelines") {
				t.Errorf("5 members: error %v", err)
			}
			s.Members = six // rejoin
			if p := plan(t, s); len(p.Workers) != 6 {
				t.Errorf("rejoin: %d workers, want 6", len(p.Workers))
			}
			s.Parts = [][]string{{"n0"}, {}, {"n2"}}
			if _, err := Plan(s); err == nil || !strings.Contains(err.Error(), "no fixed placement") {
				t.Errorf("vacant stage: error %v, want a refusal", err)
			}
		})
	}
}

// SkipPipe families in every situation the runtime and the failure runs
// meet: fresh, a drift replan on the same placement, a lost member (the
// stage keeps its other replica), a rejoin, and a vacant stage (planned
// around by the skipping variants, refused by the full pipelines).
func TestSkipPipeFamilies(t *testing.T) {
	for _, name := range SkipPipeNames() {
		t.Run(name, func(t *testing.T) {
			fam, _ := Lookup(name)
			s := job(name)
			s.Members = six
			fresh := plan(t, s)
			if fresh.Schedule != name {
				t.Errorf("plan schedule %q, want %q", fresh.Schedule, name)
			}
			parts := stagesOf(fresh)
			for st, ns := range parts {
				if len(ns) != 2 {
					t.Fatalf("fresh placement %v: stage %d holds %d nodes, want 2", parts, st, len(ns))
				}
			}

			s.Prev = fresh
			if got := stagesOf(plan(t, s)); fmt.Sprint(got) != fmt.Sprint(parts) {
				t.Errorf("replan: placement %v, want the previous %v", got, parts)
			}

			lost := parts[1][0]
			s.Members, s.Parts = nil, without(parts, lost)
			short := plan(t, s)
			if got := stagesOf(short); fmt.Sprint(got) != fmt.Sprint(s.Parts) {
				t.Errorf("lost %s: placement %v, want %v", lost, got, s.Parts)
			}

			s.Prev = short
			s.Parts = without(parts, lost)
			s.Parts[1] = append(s.Parts[1], "n9") // a newcomer takes the short stage
			s.Parts[1] = slices.Sorted(slices.Values(s.Parts[1]))
			if got := stagesOf(plan(t, s)); fmt.Sprint(got) != fmt.Sprint(s.Parts) {
				t.Errorf("rejoin: placement %v, want %v", got, s.Parts)
			}

			s.Prev = fresh
			s.Parts = [][]string{parts[0], parts[1], nil}
			p, err := Plan(s)
			if !fam.Vacancy {
				if err == nil || !strings.Contains(err.Error(), "stage 2 has no worker") {
					t.Errorf("vacant stage: error %v, want a refusal naming stage 2", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("vacant stage: %v", err)
			}
			if err := scheduler.Validate(p); err != nil {
				t.Fatalf("vacant stage: invalid plan: %v", err)
			}
			if v := p.VacantStages(); fmt.Sprint(v) != "[2]" || len(p.Stages) != 3 {
				t.Errorf("vacant stage: %d stages, vacant %v; want 3 with [2]", len(p.Stages), v)
			}
		})
	}
}
