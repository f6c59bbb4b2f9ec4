package scheduler_test

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"testing"

	"stagecoach/scheduler"
	"stagecoach/scheduler/skippipe"
)

// vacantFixture plans SkipPipe over stages 0, 1, 3, 4 of a five-stage
// model (stage 2 lost every worker) and expands it to the whole model.
func vacantFixture(t *testing.T) (compact, full *scheduler.Plan, stages []scheduler.Stage) {
	t.Helper()
	sizes := []int{2, 2, 2, 2}
	n := 8
	cfg := skippipe.Config{StageSizes: sizes, MicrobatchesPerOrigin: 2, Seed: 3, Iterations: 200, Memory: 4,
		Rules: scheduler.SkipRules{PathStages: 3, MaxSwaps: 2, SwapDistance: 1, MaxJump: 4}, CollisionAware: true, Layers: 8, Samples: 1}
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
	p, _, err := skippipe.Plan(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for s := range 5 {
		stages = append(stages, scheduler.Stage{FirstLayer: 2 * s, Layers: 2})
	}
	q, err := scheduler.ExpandStages(p, stages, []int{0, 1, 3, 4})
	if err != nil {
		t.Fatal(err)
	}
	return p, q, stages
}

func TestExpandStagesLeavesAStageVacant(t *testing.T) {
	p, q, _ := vacantFixture(t)
	if err := scheduler.Validate(q); err != nil {
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
	if err := scheduler.Validate(p); err != nil {
		t.Fatalf("compact plan changed: %v", err)
	}
	// The expanded plan survives the JSON round trip.
	var b bytes.Buffer
	if err := scheduler.Encode(&b, q); err != nil {
		t.Fatal(err)
	}
	if _, err := scheduler.DecodeBytes(b.Bytes()); err != nil {
		t.Fatalf("decode of the expanded plan: %v", err)
	}
}

// TestVacantStagesDoNotLengthenJumps checks the skip rules count occupied
// stages: with the jump limit set to the longest hop counted over occupied
// stages the plan is valid, and once stage 2 is occupied again (by a
// worker no path visits) its hops over stage 2 are a stage longer and
// break the same limit.
func TestVacantStagesDoNotLengthenJumps(t *testing.T) {
	p, q, _ := vacantFixture(t)
	// The compact plan's stages are the occupied ones, in order: a hop
	// counted over occupied stages is as long as it is there.
	jRank, jOrig := 0, 0
	for mb, m := range q.Microbatches {
		c := p.Microbatches[mb].Path
		for i := 1; i < len(m.Path); i++ {
			jRank, jOrig = max(jRank, c[i].Stage-c[i-1].Stage), max(jOrig, m.Path[i].Stage-m.Path[i-1].Stage)
		}
	}
	if jOrig <= jRank {
		t.Fatalf("fixture: the longest hop is %d stages, %d counted over occupied ones; want a longer hop over the vacant stage", jOrig, jRank)
	}
	q.Skip.MaxJump = jRank
	if err := scheduler.Validate(q); err != nil {
		t.Fatalf("max_jump %d over occupied stages: %v", jRank, err)
	}
	q.Workers = append(q.Workers, scheduler.Worker{Node: "extra", Stages: []int{2}})
	q.Programs = append(q.Programs, nil)
	var ve *scheduler.ValidationError
	if err := scheduler.Validate(q); !errors.As(err, &ve) || ve.Rule != scheduler.RuleSkipJump {
		t.Fatalf("with stage 2 occupied: %v, want a %s error", err, scheduler.RuleSkipJump)
	}
}

func TestExpandStagesRejectsBadInput(t *testing.T) {
	p, _, stages := vacantFixture(t)
	for _, keep := range [][]int{{0, 1, 3}, {1, 2, 3, 4}, {0, 3, 1, 4}, {0, 1, 3, 5}, {0, 1, 1, 4}} {
		if _, err := scheduler.ExpandStages(p, stages, keep); err == nil {
			t.Errorf("keep %v accepted", keep)
		}
	}
	g, err := scheduler.Generate("gpipe", scheduler.Spec{Stages: 2, Microbatches: 2})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := scheduler.ExpandStages(g, stages[:3], []int{0, 2}); err == nil {
		t.Error("a plan without skip rules was given a vacant stage")
	}
	// Validate refuses vacant stages outside skipping plans, and stage 0.
	g.Workers[1].Stages = []int{0}
	g.Workers[1].Replica = 1
	if err := scheduler.Validate(g); err == nil {
		t.Error("a GPipe plan with stage 1 held by no worker validated")
	}
}
