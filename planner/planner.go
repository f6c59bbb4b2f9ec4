package planner

import (
	"fmt"

	"stagecoach/costmodel"
	"stagecoach/model"
	"stagecoach/scheduler"
	"stagecoach/scheduler/skippipe"
)

// Rules are the job's side of a snapshot: its shape and what every plan
// of it must keep.
type Rules struct {
	// Stages is the pipeline depth (classic) or the stage count (SkipPipe).
	Stages int
	// Replicas is the classic pipeline replicas when Members is empty (a
	// plan without node names, `stagecoach plan`'s); 0 means 1.
	Replicas int
	// Workers is the configured worker count; SkipPipe spreads it evenly
	// over Stages unless StageSizes is set.
	Workers int
	// StageSizes optionally gives SkipPipe's nodes per stage (a cluster
	// workload's [5,3,3,3,3,3]).
	StageSizes []int
	// Microbatches per iteration (over every replica or origin), Samples
	// per microbatch, Layers of the model.
	Microbatches, Samples, Layers int
	// Chunks, Memory and Recompute go to classic generators
	// (scheduler.Spec).
	Chunks, Memory int
	Recompute      bool
	// Seed drives the SkipPipe planner's random choices.
	Seed int64
	// Model, when set, is the model trained: it sizes activations and
	// gradients for the SkipPipe input priced from Costs, and the
	// all-reduce choice.
	Model *model.Config
	// AllReduce overrides the replicated stages' algorithm
	// (scheduler.OverrideAllReduce); with Model and Costs the cheaper of
	// ring and direct is chosen otherwise.
	AllReduce string
}

// Snapshot is everything a plan depends on.
type Snapshot struct {
	Schedule string
	Rules    Rules
	// Members are the nodes to plan on. Classic families place worker
	// rank*replicas+replica on Members[rank*replicas+replica] (callers
	// order them: the coordinator and the failure runs by name); SkipPipe
	// places them itself (fresh) or keeps Prev's stages.
	Members []string
	// Parts, when set, fixes the placement: Parts[s] names the nodes of
	// stage s, fewer than configured after a loss, none for a vacant stage
	// (families with Vacancy only). Members is then ignored. Re-path,
	// restore and rejoin of SkipPipe plan this way.
	Parts [][]string
	// Prev is the plan being replaced: SkipPipe keeps its placement (a
	// drift replan) and its stages' layer ranges.
	Prev *scheduler.Plan
	// Costs is the cost model (nil: a uniform loopback network).
	Costs *costmodel.Cluster
	// Input, when set, is the SkipPipe planner's input already priced for
	// a superset of the members (`stagecoach sim` prices a cluster once);
	// it takes the place of Costs for SkipPipe. Its Partition, when set,
	// is kept for a fresh plan on all its nodes.
	Input *skippipe.Config
	// Simulate, when set, prices a plan's iteration on a cost model (the
	// simulator, injected: the planner does not import it). SkipPipe then
	// scores its candidates by it, with the all-reduces the final plan
	// gets. It needs Costs.
	Simulate func(p *scheduler.Plan, k *costmodel.Cluster) (float64, error)
	// Epoch is copied into the plan.
	Epoch int64
}

// Plan builds the snapshot's plan. Its errors do not repeat the
// schedule's name: callers say which job they planned.
func Plan(s Snapshot) (*scheduler.Plan, error) {
	f, err := Lookup(s.Schedule)
	if err != nil {
		return nil, err
	}
	var p *scheduler.Plan
	switch f.Kind {
	case KindClassic:
		p, err = classic(s)
	default:
		p, err = skipPipe(f, s)
	}
	if err != nil {
		return nil, err
	}
	p.Epoch = s.Epoch
	if err := allReduce(s, p); err != nil {
		return nil, err
	}
	return p, nil
}

// classic generates a registered schedule with as many pipeline replicas
// as the members make (Rules.Replicas without members).
func classic(s Snapshot) (*scheduler.Plan, error) {
	if s.Parts != nil {
		return nil, fmt.Errorf("a classic schedule places its workers in member order; it takes no fixed placement")
	}
	r := s.Rules
	replicas := r.Replicas
	var nodes []string
	if len(s.Members) > 0 {
		if r.Stages < 1 || len(s.Members)%r.Stages != 0 {
			return nil, fmt.Errorf("%d members are not a whole number of %d-stage pipelines", len(s.Members), r.Stages)
		}
		nodes = append(nodes, s.Members...)
		replicas = len(nodes) / r.Stages
	}
	return scheduler.Generate(s.Schedule, scheduler.Spec{
		Stages: r.Stages, Replicas: replicas, Microbatches: r.Microbatches,
		Chunks: r.Chunks, Layers: r.Layers, Samples: r.Samples, Memory: r.Memory, Recompute: r.Recompute,
		Nodes: nodes, Epoch: s.Epoch,
	})
}

// allReduce applies the rules' override, else (with a model and a cost
// model that knows every plan node) the cheaper of ring and direct per
// replicated stage, under the simulator's prices. Otherwise the plan keeps
// the ring.
func allReduce(s Snapshot, p *scheduler.Plan) error {
	if err := scheduler.OverrideAllReduce(p, s.Rules.AllReduce); err != nil {
		return err
	}
	costs := s.Costs
	if costs == nil || s.Rules.Model == nil {
		return nil
	}
	if !costs.AnyNode {
		known := map[string]bool{}
		for _, nd := range costs.Nodes {
			known[nd.Name] = true
		}
		for _, w := range p.Workers {
			if !known[w.Node] {
				return nil
			}
		}
	}
	k, err := costmodel.ForPlan(costs, p, *s.Rules.Model)
	if err != nil {
		return err
	}
	if _, err := costmodel.ChooseAllReduce(p, k); err != nil {
		return fmt.Errorf("choose all-reduce algorithms: %w", err)
	}
	return nil
}
