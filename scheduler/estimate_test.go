package scheduler

import (
	"strings"
	"testing"
)

// EstimateActions is an upper bound of what every registered schedule
// generates, so a caller can refuse a spec before generating it.
func TestEstimateActionsBoundsEverySchedule(t *testing.T) {
	for _, name := range Names() {
		for _, s := range []Spec{
			{Stages: 1, Microbatches: 1}, {Stages: 4, Microbatches: 8}, {Stages: 3, Microbatches: 7, Replicas: 2},
			{Stages: 2, Microbatches: 4, Chunks: 2}, {Stages: 8, Microbatches: 3, Replicas: 3, Chunks: 2},
		} {
			p, err := Generate(name, s)
			if err != nil {
				continue // a spec the schedule does not take
			}
			n := 0
			for _, pr := range p.Programs {
				n += len(pr)
			}
			if est := s.EstimateActions(); int64(n) > est {
				t.Errorf("%s %+v: %d actions, estimate %d", name, s, n, est)
			}
		}
	}
}

func TestGenerateRefusesPastMaxActions(t *testing.T) {
	_, err := Generate("gpipe", Spec{Stages: 4096, Microbatches: 1 << 20})
	if err == nil || !strings.Contains(err.Error(), "actions") {
		t.Fatalf("4096 stages x 2^20 microbatches: %v, want a refusal by the action limit", err)
	}
}
