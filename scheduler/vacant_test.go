package scheduler

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"testing"
)

// vacantFixture plans SkipPipe over stages 0, 1, 3, 4 of a five-stage
// model (stage 2 lost every worker) and expands it to the whole model.
func vacantFixture(t *testing.T) (compact, full *Plan, stages []Stage) {
	t.Helper()
	sizes := []int{2, 2, 2, 2}
	n := 8
	cfg := SkipPipeConfig{StageSizes: sizes, MicrobatchesPerOrigin: 2, Seed: 3, Iterations: 200, Memory: 4,
		Rules: SkipRules{PathStages: 3, MaxSwaps: 2, SwapDistance: 1, MaxJump: 4}, CollisionAware: true, Layers: 8, Samples: 1}
	for i := range n {
		cfg.NodeNames = append(cfg.NodeNames, fmt.Sprintf("n%d", i))
		cfg.ForwardS = append(cfg.ForwardS, 0.5)
	}
	cfg.Delay = make([][]float64, n)
	for a := range n {
		cfg.Delay[a] = make([]float64, n)
		for b := range n {
			if a != b {
				cfg.Delay[a][b] = 0.1 * float64(1+(a*b)%3)
			}
		}
	}
	p, _, err := PlanSkipPipe(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for s := range 5 {
		stages = append(stages, Stage{FirstLayer: 2 * s, Layers: 2})
	}
	q, err := ExpandStages(p, stages, []int{0, 1, 3, 4})
	if err != nil {
		t.Fatal(err)
	}
	return p, q, stages
}

func TestExpandStagesLeavesAStageVacant(t *testing.T) {
	p, q, _ := vacantFixture(t)
	if err := Validate(q); err != nil {
		t.Fatalf("expanded plan is invalid: %v", err)
	}
	if v := q.VacantStages(); !slices.Equal(v, []int{2}) {
		t.Fatalf("vacant stages %v, want [2]", v)
	}
	if len(q.Stages) != 5 || len(p.Stages) != 4 {
		t.Fatalf("stages: expanded %d, compact %d", len(q.Stages), len(p.Stages))
	}
	want := []int{0, 1, 3, 4}
	for mb, m := range q.Microbatches {
		for i, h := range m.Path {
			if h.Stage == 2 {
				t.Fatalf("microbatch %d visits the vacant stage at hop %d", mb, i)
			}
			if h.Stage != want[p.Microbatches[mb].Path[i].Stage] {
				t.Fatalf("microbatch %d hop %d: stage %d, compact stage %d", mb, i, h.Stage, p.Microbatches[mb].Path[i].Stage)
			}
		}
	}
	for w := range q.Programs {
		for i, a := range q.Programs[w] {
			if a.Stage == 2 {
				t.Fatalf("worker %d action %d (%v) runs on the vacant stage", w, i, a)
			}
		}
	}
	// The compact plan is untouched.
	if err := Validate(p); err != nil {
		t.Fatalf("compact plan changed: %v", err)
	}
	// The expanded plan survives the JSON round trip.
	var b bytes.Buffer
	if err := Encode(&b, q); err != nil {
		t.Fatal(err)
	}
	if _, err := DecodeBytes(b.Bytes()); err != nil {
		t.Fatalf("decode of the expanded plan: %v", err)
	}
}

// TestVacantStagesDoNotLengthenJumps checks the skip rules count occupied
// stages: with the jump limit set to the longest hop counted over occupied
// stages the plan is valid, and once stage 2 is occupied again (by a
// worker no path visits) its hops over stage 2 are a stage longer and
// break the same limit.
func TestVacantStagesDoNotLengthenJumps(t *testing.T) {
	_, q, _ := vacantFixture(t)
	rank := occupiedRank(q)
	jRank, jOrig := 0, 0
	for _, m := range q.Microbatches {
		for i := 1; i < len(m.Path); i++ {
			a, b := m.Path[i-1].Stage, m.Path[i].Stage
			jRank, jOrig = max(jRank, rank[b]-rank[a]), max(jOrig, b-a)
		}
	}
	if jOrig <= jRank {
		t.Fatalf("fixture: the longest hop is %d stages, %d counted over occupied ones; want a longer hop over the vacant stage", jOrig, jRank)
	}
	q.Skip.MaxJump = jRank
	if err := Validate(q); err != nil {
		t.Fatalf("max_jump %d over occupied stages: %v", jRank, err)
	}
	q.Workers = append(q.Workers, Worker{Node: "extra", Stages: []int{2}})
	q.Programs = append(q.Programs, nil)
	var ve *ValidationError
	if err := Validate(q); !errors.As(err, &ve) || ve.Rule != RuleSkipJump {
		t.Fatalf("with stage 2 occupied: %v, want a %s error", err, RuleSkipJump)
	}
}

func TestExpandStagesRejectsBadInput(t *testing.T) {
	p, _, stages := vacantFixture(t)
	for _, keep := range [][]int{{0, 1, 3}, {1, 2, 3, 4}, {0, 3, 1, 4}, {0, 1, 3, 5}, {0, 1, 1, 4}} {
		if _, err := ExpandStages(p, stages, keep); err == nil {
			t.Errorf("keep %v accepted", keep)
		}
	}
	g, err := Generate("gpipe", Spec{Stages: 2, Microbatches: 2})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ExpandStages(g, stages[:3], []int{0, 2}); err == nil {
		t.Error("a plan without skip rules was given a vacant stage")
	}
	// Validate refuses vacant stages outside skipping plans, and stage 0.
	g.Workers[1].Stages = []int{0}
	g.Workers[1].Replica = 1
	if err := Validate(g); err == nil {
		t.Error("a GPipe plan with stage 1 held by no worker validated")
	}
}
