package skippipe

import (
	"os"
	"path/filepath"
	"testing"

	"stagecoach/scheduler"
)

// refFile reads the authors' published schedule from ../shared/reference
// beside the module root, skipping the test when it is absent.
func refFile(t testing.TB) *SkipPipeRef {
	t.Helper()
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	// The test runs in <module>/scheduler/skippipe; the reference sits
	// beside <module>.
	path := filepath.Join(wd, "..", "..", "..", "shared", "reference", "skippipe-geo-schedule.json")
	data, err := os.ReadFile(path)
	if err != nil {
		t.Skipf("reference schedule not available (%v): skipping", err)
	}
	ref, err := ParseSkipPipeRef(data)
	if err != nil {
		t.Fatalf("parse %s: %v", path, err)
	}
	return ref
}

func TestRefImportPlansValidate(t *testing.T) {
	ref := refFile(t)
	cfg := ref.Config(0.44)
	if cfg.Memory != 6 || cfg.MicrobatchesPerOrigin != 6 || len(ref.Variants) != 3 {
		t.Fatalf("memory %d, per origin %d, variants %d; want 6, 6, 3", cfg.Memory, cfg.MicrobatchesPerOrigin, len(ref.Variants))
	}
	for i := range ref.Variants {
		v := &ref.Variants[i]
		plan, notes, err := ref.RefPlan(v, cfg)
		if err != nil {
			t.Fatalf("%s: %v", v.Name, err)
		}
		if len(plan.Microbatches) != 30 {
			t.Errorf("%s: %d microbatches, want 30", v.Name, len(plan.Microbatches))
		}
		est := newEval(newNet(&cfg, cfg.Partition)).replayPlan(plan)
		t.Logf("%s: %d agents, estimate %.2f s (authors %.2f s), notes %v", v.Name, len(v.Agents), est, v.ExpectedS, notes)
	}
	base, err := RefBaselinePlan(cfg, 3, 9)
	if err != nil {
		t.Fatal(err)
	}
	if err := scheduler.Validate(base); err != nil {
		t.Fatal(err)
	}
	t.Logf("ref-baseline estimate %.2f s (authors %.2f s)", newEval(newNet(&cfg, cfg.Partition)).replayPlan(base), ref.BaselineExpectedS)
	for _, name := range Variants() {
		c := cfg
		c.Partition = nil
		c.RefinePlacement = true
		plan, st, err := PlanVariant(name, c)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if err := scheduler.Validate(plan); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		t.Logf("%s (own placement): estimate %.2f s, replay %.2f, evals %d, policy %s, placement cost %.2f", name, st.EstimateS, newEval(newNet(&cfg, st.Partition)).replayPlan(plan), st.Evaluations, st.Policy, st.PlacementCost)
		c = cfg
		c.RefinePlacement = true
		plan, st, err = PlanVariant(name, c)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if err := scheduler.Validate(plan); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		t.Logf("%s (file placement): estimate %.2f s, replay %.2f, evals %d, policy %s, placement cost %.2f", name, st.EstimateS, newEval(newNet(&cfg, st.Partition)).replayPlan(plan), st.Evaluations, st.Policy, st.PlacementCost)
	}
}
