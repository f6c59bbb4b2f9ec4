package coordinator

import (
	"strings"
	"testing"

	"stagecoach/internal/etcdx"
	"stagecoach/model"
)

func skipJob(schedule string) *Config {
	return &Config{Job: "j", Endpoints: []string{"x"}, Workers: 6, Stages: 3, Schedule: schedule, Steps: 1, CorpusDir: "c", OutDir: "o",
		Train: model.TrainConfig{Model: model.Config{Layers: 6, Dim: 8, Heads: 2, Ctx: 32, Seed: 1}, Microbatches: 6, MicrobatchSize: 2}}
}

func regs(names ...string) []etcdx.Member {
	var out []etcdx.Member
	for i, n := range names {
		out = append(out, etcdx.Member{Name: n, Addr: "127.0.0.1:1", Lease: int64(i + 1)})
	}
	return out
}

// The coordinator maps its registered members to the planner's snapshot
// and back: plan workers in plan order carry the members' addresses, a
// re-path keeps the survivors' stages and can leave one vacant, and a
// family that visits every stage refuses the vacancy.
func TestCoordinatorPlansThroughThePlanner(t *testing.T) {
	for _, schedule := range []string{"skippipe", "skippipe-full"} {
		cfg := skipJob(schedule)
		p, ordered, layout, err := buildPlan(cfg, regs("a", "b", "c", "d", "e", "f"), 4)
		if err != nil {
			t.Fatalf("%s: %v", schedule, err)
		}
		if p.Epoch != 4 || layout != model.HeadFirst || len(ordered) != 6 {
			t.Fatalf("%s: epoch %d, layout %v, %d members", schedule, p.Epoch, layout, len(ordered))
		}
		parts := make([][]etcdx.Member, len(p.Stages))
		for i, w := range p.Workers {
			if ordered[i].Name != w.Node {
				t.Errorf("%s: plan worker %d runs on %q, member %q", schedule, i, w.Node, ordered[i].Name)
			}
			parts[w.Stages[0]] = append(parts[w.Stages[0]], ordered[i])
		}
		parts[2] = nil
		_, ordered, _, err = planOnPartition(cfg, parts, 5, p)
		if schedule == "skippipe-full" {
			if err == nil || !strings.Contains(err.Error(), "stage 2 has no worker") {
				t.Errorf("%s with stage 2 vacant: error %v, want a refusal", schedule, err)
			}
			continue
		}
		if err != nil || len(ordered) != 4 {
			t.Errorf("%s with stage 2 vacant: %d members, %v", schedule, len(ordered), err)
		}
	}
}

func TestConfigNamesEveryScheduleThroughTheRegistry(t *testing.T) {
	for name, want := range map[string]string{
		"gpipe-greedy": `schedule "gpipe-greedy" is now called "skippipe-full-greedy"`,
		"nope":         `unknown schedule "nope"`,
	} {
		if err := skipJob(name).Validate(); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("schedule %s: error %v, want %q", name, err, want)
		}
	}
	for _, name := range []string{"gpipe", "1f1b", "skippipe", "skippipe-full", "skippipe-nonca"} {
		if err := skipJob(name).Validate(); err != nil && strings.Contains(err.Error(), "schedule") {
			t.Errorf("schedule %s: %v", name, err)
		}
	}
}
