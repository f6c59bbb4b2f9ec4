package skippiperef

import (
	"errors"
	"fmt"

	"stagecoach/scheduler"
	"stagecoach/scheduler/skippipe"
)

// NodeName names node i of an authors' file.
func NodeName(i int) string { return fmt.Sprintf("n%d", i) }

// agentSize is the microbatches one agent carries in the file's finest
// split (ours-sends over the most agents any origin has): the unit the
// authors' node memory counts.
func (r *File) agentSize() int {
	most := 1
	for _, v := range r.Variants {
		per := map[int]int{}
		for _, a := range v.Agents {
			per[a.Path[0]]++
			most = max(most, per[a.Path[0]])
		}
	}
	return max(1, r.MicrobatchesPerOrigin/most)
}

// Config is the SkipPipe setting of the file: its nodes (named by
// NodeName), stage sizes and placement, delays, stage-0 microbatch
// counts, and a per-node cap of memory agents of the finest agent size
// (3 x 2 = 6 microbatches in the published file), with forwardS the
// forward time of one microbatch through one stage on every node.
func (r *File) Config(forwardS float64) skippipe.Config {
	n := len(r.Delays)
	cfg := skippipe.Config{
		NodeNames:             make([]string, n),
		Delay:                 r.Delays,
		ForwardS:              make([]float64, n),
		Memory:                r.Memory * r.agentSize(),
		MicrobatchesPerOrigin: r.MicrobatchesPerOrigin,
		Partition:             r.Partitions,
	}
	for i := range n {
		cfg.NodeNames[i] = NodeName(i)
		cfg.ForwardS[i] = forwardS
	}
	for _, p := range r.Partitions {
		cfg.StageSizes = append(cfg.StageSizes, len(p))
	}
	cfg.Rules = scheduler.DefaultSkipRules(len(r.Partitions))
	if len(r.Variants) > 0 && len(r.Variants[0].Agents) > 0 {
		cfg.Rules.PathStages = len(r.Variants[0].Agents[0].Path)
	}
	cfg.Layers = len(r.Partitions)
	return cfg
}

// Plan turns one of the file's skipping plans into a scheduler.Plan
// over cfg (from Config; its Partition must be the file's). Each agent
// becomes its microbatches, numbered in agent order. A node with a
// complete processing order in the file runs its work in that order, an
// agent's microbatches back to back (an origin's first entry for an
// agent is its forwards, the second its losses, the third its backwards;
// elsewhere the first is forwards and the second backwards); every other
// node runs work in arrival order under the planner's timing estimate.
// The notes say which nodes fell back and why.
func (r *File) Plan(v *Variant, cfg skippipe.Config) (*scheduler.Plan, []string, error) {
	if err := cfg.Check(); err != nil {
		return nil, nil, err
	}
	if cfg.Partition == nil {
		return nil, nil, errors.New("skippipe file: the config must carry the file's partitions")
	}
	net, err := skippipe.NewNet(cfg)
	if err != nil {
		return nil, nil, err
	}
	pathStages := net.Rules().PathStages
	notes := append([]string(nil), v.Notes...)
	var paths [][]int
	agentMBs := make([][]int, 0, len(v.Agents))
	perOrigin := map[int]int{}
	for _, a := range v.Agents {
		perOrigin[a.Path[0]]++
	}
	for _, a := range v.Agents {
		if len(a.Path) != pathStages {
			return nil, nil, fmt.Errorf("skippipe file: %s agent %d visits %d stages, agent %d visits %d (every path must visit the same number)", v.Name, a.Key, len(a.Path), v.Agents[0].Key, pathStages)
		}
		size := r.MicrobatchesPerOrigin / perOrigin[a.Path[0]]
		var ids []int
		for range size {
			ids = append(ids, len(paths))
			paths = append(paths, append([]int(nil), a.Path...))
		}
		agentMBs = append(agentMBs, ids)
	}
	agentIdx := map[int]int{}
	for i, a := range v.Agents {
		agentIdx[a.Key] = i
	}
	fifo := net.ArrivalOrder(paths)
	order := make([][]skippipe.Task, len(fifo))
	fromFile := 0
	for node := range order {
		order[node] = fifo[node]
		if node >= len(v.Order) || v.Order[node] == nil {
			continue
		}
		got, err := expandOrder(v.Order[node], node, v.Agents, agentIdx, agentMBs, paths)
		if err == nil && len(got) != len(fifo[node]) {
			err = fmt.Errorf("covers %d of its %d tasks", len(got), len(fifo[node]))
		}
		if err != nil {
			notes = append(notes, fmt.Sprintf("%s: node %d order %v; arrival order used", v.Name, node, err))
			continue
		}
		order[node] = got
		fromFile++
	}
	plan := net.Build(paths, order, v.Name, true)
	if err := scheduler.Validate(plan); err != nil && fromFile > 0 {
		notes = append(notes, fmt.Sprintf("%s: the file's order does not replay here (%v); arrival order used on every node", v.Name, err))
		plan = net.Build(paths, fifo, v.Name, true)
	}
	if err := scheduler.Validate(plan); err != nil {
		var ve *scheduler.ValidationError
		if errors.As(err, &ve) && ve.Rule == scheduler.RuleSkipCap {
			plan.Skip.MaxPerWorker = 0
			notes = append(notes, fmt.Sprintf("%s breaks the per-node cap (%v); cap lifted", v.Name, err))
			err = scheduler.Validate(plan)
		}
		if err != nil {
			return nil, notes, fmt.Errorf("skippipe file: %s: %w", v.Name, err)
		}
	}
	return plan, notes, nil
}

// expandOrder turns a node's (agent, start) list into tasks.
func expandOrder(es []OrderEntry, node int, agents []Agent, agentIdx map[int]int, agentMBs [][]int, paths [][]int) ([]skippipe.Task, error) {
	occ := map[int]int{}
	var out []skippipe.Task
	for _, e := range es {
		ai, ok := agentIdx[e.Agent]
		if !ok {
			return nil, fmt.Errorf("names agent %d, which has no path", e.Agent)
		}
		path := agents[ai].Path
		k := len(path)
		hop := -1
		for i, v := range path {
			if v == node {
				hop = i
			}
		}
		if hop < 0 {
			return nil, fmt.Errorf("lists agent %d, whose path does not visit it", e.Agent)
		}
		c := occ[e.Agent]
		occ[e.Agent]++
		var j int
		switch {
		case hop == 0 && c < 3:
			j = []int{0, k, 2 * k}[c]
		case hop > 0 && c < 2:
			j = []int{hop, 2*k - hop}[c]
		default:
			return nil, fmt.Errorf("lists agent %d too often", e.Agent)
		}
		for _, mb := range agentMBs[ai] {
			out = append(out, skippipe.Task{Microbatch: int32(mb), Step: int32(j)})
		}
	}
	return out, nil
}

// BaselinePlan is the authors' baseline form (schedule
// "ref-baseline"): pipelines complete pipelines, pipeline k made of node
// k of every stage of cfg.Partition, each carrying perPipeline
// microbatches (the authors use partition_sizes[1] = 3 pipelines of 9:
// 27 microbatches, against 30 in the skipping plans); every node runs all
// its forwards before any backward, the loss on the pipeline's stage-0
// node. Nodes outside the pipelines only join their stage's all-reduce.
func BaselinePlan(cfg skippipe.Config, pipelines, perPipeline int) (*scheduler.Plan, error) {
	ns := len(cfg.StageSizes)
	cfg.Rules = scheduler.SkipRules{PathStages: ns, MaxJump: 1, MaxPerWorker: 1 << 30}
	if err := cfg.Check(); err != nil {
		return nil, err
	}
	if cfg.Partition == nil {
		return nil, errors.New("ref-baseline: the config must carry a partition")
	}
	if pipelines < 1 || perPipeline < 1 || pipelines*perPipeline > scheduler.MaxMicrobatches {
		return nil, fmt.Errorf("ref-baseline: %d pipelines of %d microbatches, want >= 1 of >= 1", pipelines, perPipeline)
	}
	for s, p := range cfg.Partition {
		if len(p) < pipelines {
			return nil, fmt.Errorf("ref-baseline: stage %d has %d nodes, fewer than %d pipelines", s, len(p), pipelines)
		}
	}
	net, err := skippipe.NewNet(cfg)
	if err != nil {
		return nil, err
	}
	var paths [][]int
	for k := range pipelines {
		for range perPipeline {
			path := make([]int, ns)
			for s := range ns {
				path[s] = cfg.Partition[s][k]
			}
			paths = append(paths, path)
		}
	}
	return net.Build(paths, net.FlushOrder(paths), "ref-baseline", false), nil
}
