package coordinator

import (
	"fmt"
	"slices"
	"strings"
)

// StageMap names which worker holds which stage, in stage order:
// "stage 0: w0; stage 1: w1, w2" (a stage's replicas in plan order). It
// is the line an operator reads when a plan is installed.
func StageMap(ws []PlanWorker) string {
	holders := map[int][]string{}
	var stages []int
	for _, w := range ws {
		for _, s := range w.Stages {
			if _, ok := holders[s]; !ok {
				stages = append(stages, s)
			}
			holders[s] = append(holders[s], w.Name)
		}
	}
	slices.Sort(stages)
	parts := make([]string, len(stages))
	for i, s := range stages {
		parts[i] = fmt.Sprintf("stage %d: %s", s, strings.Join(holders[s], ", "))
	}
	return strings.Join(parts, "; ")
}
