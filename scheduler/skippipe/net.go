package skippipe

import (
	"errors"

	"stagecoach/scheduler"
)

// Net is a checked Config with its placement fixed, for paths chosen
// elsewhere (the SkipPipe authors' schedule files, package skippiperef):
// it times them, orders every node's work and builds the Plan the way
// the planners do with their own paths. Paths are node indices into the
// config's NodeNames, the origin (a stage-0 node) first; every path
// visits distinct stages.
type Net struct{ nt *spNet }

// NewNet checks cfg, which must carry its placement in Partition.
func NewNet(cfg Config) (*Net, error) {
	if err := cfg.Check(); err != nil {
		return nil, err
	}
	if cfg.Partition == nil {
		return nil, errors.New("skippipe config: a net needs the partition fixed")
	}
	return &Net{newNet(&cfg, cfg.Partition)}, nil
}

// Rules are the config's path rules with their defaults applied.
func (n *Net) Rules() scheduler.SkipRules { return n.nt.rules }

// ArrivalOrder times paths under the planners' estimate, every node
// taking its work in arrival order, and returns each node's tasks in the
// order it ran them.
func (n *Net) ArrivalOrder(paths [][]int) [][]Task { return n.order(paths, polFIFO) }

// FlushOrder is ArrivalOrder with GPipe's flush: no node runs a backward
// before its last forward.
func (n *Net) FlushOrder(paths [][]int) [][]Task { return n.order(paths, polFlush) }

func (n *Net) order(paths [][]int, pol spPolicy) [][]Task {
	ev := newEval(n.nt)
	ev.run(paths, pol, true)
	out := make([][]Task, len(ev.order))
	for v := range out {
		out[v] = append([]Task(nil), ev.order[v]...)
	}
	return out
}

// Build turns paths and every node's task order (order[v] lists node v's
// tasks, each exactly once) into a Plan named name, as the planners
// build theirs; skip marks it a skipping plan, carrying Rules. Validate
// the result: an order the paths cannot run deadlocks there.
func (n *Net) Build(paths [][]int, order [][]Task, name string, skip bool) *scheduler.Plan {
	return n.nt.buildPlan(paths, order, name, skip)
}

// Replay times p's programs in program order under the planners' cost
// model (links never queue) and returns the makespan of the compute.
func (n *Net) Replay(p *scheduler.Plan) float64 { return n.nt.replay(p) }
