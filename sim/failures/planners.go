package failures

import (
	"fmt"
	"sort"

	"stagecoach/coordinator/policy"
	"stagecoach/scheduler"
)

// Classic plans a registered schedule (GPipe, 1F1B, ...) with as many
// data-parallel replicas of the pipeline as the nodes make, as the
// coordinator does: the iteration keeps its microbatches.
type Classic struct {
	Schedule string
	// Spec is the shape; Replicas and Nodes are set per call.
	Spec scheduler.Spec
}

// Family implements Planner.
func (c Classic) Family() policy.Family { return policy.Classic }

// Stages implements Planner.
func (c Classic) Stages() int { return c.Spec.Stages }

// OnNodes implements Planner.
func (c Classic) OnNodes(nodes []string) (*scheduler.Plan, error) {
	if c.Spec.Stages < 1 || len(nodes)%c.Spec.Stages != 0 || len(nodes) == 0 {
		return nil, fmt.Errorf("failures: %d nodes are not a whole number of %d-stage pipelines", len(nodes), c.Spec.Stages)
	}
	s := c.Spec
	s.Replicas = len(nodes) / s.Stages
	s.Nodes = append([]string(nil), nodes...)
	sort.Strings(s.Nodes)
	return scheduler.Generate(c.Schedule, s)
}

// OnPartition implements Planner: classic schedules have no partition.
func (c Classic) OnPartition([][]string) (*scheduler.Plan, error) {
	return nil, fmt.Errorf("failures: %s does not re-path", c.Schedule)
}

// SkipPipe plans a SkipPipe variant: from Base (the planner's input for
// every node of the cluster) on all nodes, and with
// scheduler.PlanSkipPipeOnPartition on a partition, as the coordinator's
// re-path and rejoin do.
type SkipPipe struct {
	Variant string
	Base    scheduler.SkipPipeConfig
	// Layers are the model's stages (layer ranges) of the full pipeline.
	Layers       []scheduler.Stage
	Microbatches int
	// Cache, when set, keeps the plans made per partition: the planner
	// simulates many candidates, and runs of one trace with other
	// checkpoint intervals meet the same partitions.
	Cache map[string]*scheduler.Plan
}

// Family implements Planner.
func (s SkipPipe) Family() policy.Family {
	if s.Variant == scheduler.SkipPipeFull {
		return policy.SkipPipeFull
	}
	return policy.SkipPipe
}

// Stages implements Planner.
func (s SkipPipe) Stages() int { return len(s.Base.StageSizes) }

// OnNodes implements Planner: the initial plan, on Base's nodes.
func (s SkipPipe) OnNodes(nodes []string) (*scheduler.Plan, error) {
	if len(nodes) != len(s.Base.NodeNames) {
		return nil, fmt.Errorf("failures: SkipPipe starts on its %d nodes, not %d", len(s.Base.NodeNames), len(nodes))
	}
	p, _, err := scheduler.PlanSkipPipeVariant(s.Variant, s.Base)
	return p, err
}

// OnPartition implements Planner.
func (s SkipPipe) OnPartition(parts [][]string) (*scheduler.Plan, error) {
	key := fmt.Sprint(parts)
	if p, ok := s.Cache[key]; ok {
		return p, nil
	}
	p, err := scheduler.PlanSkipPipeOnPartition(s.Variant, parts, s.Layers, s.Microbatches, s.subset)
	if err == nil && s.Cache != nil {
		s.Cache[key] = p
	}
	return p, err
}

// subset is Base restricted to the named nodes, in that order.
func (s SkipPipe) subset(names []string) (scheduler.SkipPipeConfig, error) {
	idx := map[string]int{}
	for i, n := range s.Base.NodeNames {
		idx[n] = i
	}
	c := s.Base
	c.NodeNames, c.ForwardS = nil, nil
	c.Delay, c.LinkBusy = make([][]float64, len(names)), make([][]float64, len(names))
	pos := make([]int, len(names))
	for i, n := range names {
		j, ok := idx[n]
		if !ok {
			return c, fmt.Errorf("failures: node %q is not in the SkipPipe input", n)
		}
		pos[i] = j
		c.NodeNames = append(c.NodeNames, n)
		c.ForwardS = append(c.ForwardS, s.Base.ForwardS[j])
	}
	for i, a := range pos {
		c.Delay[i], c.LinkBusy[i] = make([]float64, len(pos)), make([]float64, len(pos))
		for k, b := range pos {
			c.Delay[i][k], c.LinkBusy[i][k] = s.Base.Delay[a][b], s.Base.LinkBusy[a][b]
		}
	}
	return c, nil
}
