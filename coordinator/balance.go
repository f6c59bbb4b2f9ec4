package coordinator

import (
	"fmt"
	"strconv"
	"strings"

	"stagecoach/scheduler"
)

// Balanced stages (Config.Balance): the plan's stages hold contiguous
// layer ranges sized for the planning cost model's node speeds and the
// head's cost (scheduler.BalanceLayers), kept only when the simulator
// says the iteration gets faster. Workers load whatever ranges the plan
// gives; a checkpoint of another split is cut to the plan's ranges on
// restore (restore.go), so the run stays the single-process trainer's,
// bit for bit, whatever the split.

// balanceStages returns p with its layers placed by the balancer when
// cfg.Balance is set and a cost model is known, else p. On a replan
// (calibrate.go) the cost model is the new calibration: layers may move,
// and their state with them.
func balanceStages(cfg *Config, p *scheduler.Plan) (*scheduler.Plan, error) {
	if !cfg.Balance {
		return p, nil
	}
	costs, err := cfg.planningCosts()
	if err != nil {
		return nil, err
	}
	if costs == nil {
		cfg.Logf("balance: no cost model (give --cluster with node speeds, or --costs): the even split")
		return p, nil
	}
	k, err := costs.PerLayer(p)
	if err != nil {
		return nil, fmt.Errorf("coordinator: balance: %w", err)
	}
	speeds, err := k.StageSpeeds(p)
	if err != nil {
		return nil, fmt.Errorf("coordinator: balance: %w", err)
	}
	layers := 0
	for _, s := range p.Stages {
		layers += s.Layers
	}
	split, err := scheduler.BalanceLayers(layers, p.HeadStage, k.LayerCosts(), speeds)
	if err != nil {
		return nil, fmt.Errorf("coordinator: %w", err)
	}
	q, err := scheduler.WithLayers(p, split)
	if err != nil {
		return nil, fmt.Errorf("coordinator: %w", err)
	}
	if cfg.Simulator == nil {
		cfg.Logf("balance: layers per stage %s (not simulated)", layerCounts(q))
		return q, nil
	}
	before, err := cfg.Simulator.Simulate(p, k, false)
	if err != nil {
		return nil, fmt.Errorf("coordinator: balance: simulate the even split: %w", err)
	}
	after, err := cfg.Simulator.Simulate(q, k, false)
	if err != nil {
		return nil, fmt.Errorf("coordinator: balance: simulate the balanced split: %w", err)
	}
	if !(after.IterationTimeS < before.IterationTimeS) {
		cfg.Logf("balance: layers per stage %s would take %.4g s per iteration against %.4g s: the even split kept",
			layerCounts(q), after.IterationTimeS, before.IterationTimeS)
		return p, nil
	}
	cfg.Logf("balance: layers per stage %s -> %s: %.4g s -> %.4g s per iteration (simulated)",
		layerCounts(p), layerCounts(q), before.IterationTimeS, after.IterationTimeS)
	return q, nil
}

// checkRanges checks that p's stages hold contiguous layer ranges
// covering the model's layers in order, each at least one layer when
// there are as many layers as stages.
func checkRanges(p *scheduler.Plan, layers int) error {
	next := 0
	for i, st := range p.Stages {
		if st.FirstLayer != next || st.Layers < 0 || (st.Layers == 0 && layers >= len(p.Stages)) {
			return fmt.Errorf("coordinator: plan stage %d holds layers [%d,%d), want a non-empty range from layer %d",
				i, st.FirstLayer, st.FirstLayer+st.Layers, next)
		}
		next += st.Layers
	}
	if next != layers {
		return fmt.Errorf("coordinator: the plan's stages hold %d layers, the model has %d", next, layers)
	}
	return nil
}

// layerCounts is p's layers per stage, "5,2,5,4".
func layerCounts(p *scheduler.Plan) string {
	out := make([]string, len(p.Stages))
	for i, s := range p.Stages {
		out[i] = strconv.Itoa(s.Layers)
	}
	return strings.Join(out, ",")
}
