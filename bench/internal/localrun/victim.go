package localrun

import (
	"slices"

	"stagecoach/coordinator"
)

// Victim chooses a worker outside stage 0 to crash, none of crashed.
// With stage < 0 it is the first (by name) of the stage with the most
// workers left, the lowest such stage on ties, and only while that stage
// keeps another worker (so every stage keeps a replica and the losses
// spread); with stage >= 0 it is the next worker of that stage, its last
// one included. "" when there is none.
func Victim(plan []coordinator.PlanWorker, crashed []string, stage int) string {
	byStage := map[int][]string{}
	for _, w := range plan {
		if len(w.Stages) == 1 && w.Stages[0] > 0 && !slices.Contains(crashed, w.Name) {
			byStage[w.Stages[0]] = append(byStage[w.Stages[0]], w.Name)
		}
	}
	if stage >= 0 {
		ws := byStage[stage]
		if len(ws) == 0 {
			return ""
		}
		slices.Sort(ws)
		return ws[0]
	}
	best := -1
	for s, ws := range byStage {
		if len(ws) > 1 && (best < 0 || len(ws) > len(byStage[best]) || len(ws) == len(byStage[best]) && s < best) {
			best = s
		}
	}
	if best < 0 {
		return ""
	}
	slices.Sort(byStage[best])
	return byStage[best][0]
}
