package skippiperef

import (
	"os"
	"path/filepath"
	"testing"

	"stagecoach/scheduler"
	"stagecoach/scheduler/skippipe"
)

// refFile reads the authors' published schedule from ../shared/reference
// beside the module root, skipping the test when it is absent.
func refFile(t testing.TB) *File {
	t.Helper()
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	// The test runs in <module>/scheduler/skippiperef; the reference sits
	// beside <module>.
	path := filepath.Join(wd, "..", "..", "..", "shared", "reference", "skippipe-geo-schedule.json")
	data, err := os.ReadFile(path)
	if err != nil {
		t.Skipf("reference schedule not available (%v): skipping", err)
	}
	ref, err := Parse(data)
	if err != nil {
		t.Fatalf("parse %s: %v", path, err)
	}
	return ref
}

func TestImportedPlansValidate(t *testing.T) {
	ref := refFile(t)
	cfg := ref.Config(0.44)
	if cfg.Memory != 6 || cfg.MicrobatchesPerOrigin != 6 || len(ref.Variants) != 3 {
		t.Fatalf("memory %d, per origin %d, variants %d; want 6, 6, 3", cfg.Memory, cfg.MicrobatchesPerOrigin, len(ref.Variants))
	}
	for i := range ref.Variants {
		v := &ref.Variants[i]
		plan, notes, err := ref.Plan(v, cfg)
		if err != nil {
			t.Fatalf("%s: %v", v.Name, err)
		}
		if len(plan.Microbatches) != 30 {
			t.Errorf("%s: %d microbatches, want 30", v.Name, len(plan.Microbatches))
		}
		est := replay(t, cfg, cfg.Partition, plan)
		t.Logf("%s: %d agents, estimate %.2f s (authors %.2f s), notes %v", v.Name, len(v.Agents), est, v.ExpectedS, notes)
	}
	base, err := BaselinePlan(cfg, 3, 9)
	if err != nil {
		t.Fatal(err)
	}
	if err := scheduler.Validate(base); err != nil {
		t.Fatal(err)
	}
	t.Logf("ref-baseline estimate %.2f s (authors %.2f s)", replay(t, cfg, cfg.Partition, base), ref.BaselineExpectedS)
	for _, name := range skippipe.Variants() {
		c := cfg
		c.Partition = nil
		c.RefinePlacement = true
		plan, st, err := skippipe.PlanVariant(name, c)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if err := scheduler.Validate(plan); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		t.Logf("%s (own placement): estimate %.2f s, replay %.2f, evals %d, policy %s, placement cost %.2f", name, st.EstimateS, replay(t, cfg, st.Partition, plan), st.Evaluations, st.Policy, st.PlacementCost)
		c = cfg
		c.RefinePlacement = true
		plan, st, err = skippipe.PlanVariant(name, c)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if err := scheduler.Validate(plan); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		t.Logf("%s (file placement): estimate %.2f s, replay %.2f, evals %d, policy %s, placement cost %.2f", name, st.EstimateS, replay(t, cfg, st.Partition, plan), st.Evaluations, st.Policy, st.PlacementCost)
	}
}

// replay is the planners' estimate of p over cfg's nodes placed as
// partition.
func replay(t *testing.T, cfg skippipe.Config, partition [][]int, p *scheduler.Plan) float64 {
	t.Helper()
	cfg.Partition = partition
	net, err := skippipe.NewNet(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return net.Replay(p)
}
