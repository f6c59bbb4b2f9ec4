package coordinator

import "testing"

func TestStageMap(t *testing.T) {
	for _, tc := range []struct {
		ws   []PlanWorker
		want string
	}{
		{nil, ""},
		{[]PlanWorker{{Name: "w1", Stages: []int{1}}, {Name: "w0", Stages: []int{0}}}, "stage 0: w0; stage 1: w1"},
		{[]PlanWorker{{Name: "a", Stages: []int{0}}, {Name: "b", Stages: []int{0}, Replica: 1}, {Name: "c", Stages: []int{1, 2}}},
			"stage 0: a, b; stage 1: c; stage 2: c"},
	} {
		if got := StageMap(tc.ws); got != tc.want {
			t.Errorf("StageMap(%v) = %q, want %q", tc.ws, got, tc.want)
		}
	}
}
