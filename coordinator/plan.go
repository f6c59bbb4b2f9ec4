package coordinator

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"

	"stagecoach/costmodel"
	"stagecoach/internal/atomicfile"
	"stagecoach/internal/etcdx"
	"stagecoach/model"
	"stagecoach/scheduler"
)

// PlanManifest is what etcd keeps about a plan epoch: small enough for one
// etcd value whatever the cluster size. The plan itself lives on disk,
// named by its content hash.
type PlanManifest struct {
	Epoch     int64        `json:"epoch"`
	Schedule  string       `json:"schedule"`
	Stages    int          `json:"stages"`
	SHA256    string       `json:"sha256"`
	Bytes     int          `json:"bytes"`
	Path      string       `json:"path"`
	LeaderRev int64        `json:"leader_rev"`
	Workers   []PlanWorker `json:"workers"`
}

// PlanWorker is one plan worker: which registered member runs it.
type PlanWorker struct {
	Name    string `json:"name"`
	Addr    string `json:"addr"`
	Stages  []int  `json:"stages"`
	Replica int    `json:"replica"`
}

// SkipPipe is the schedule name of SkipPipe plans. It is not a classic
// generator (it needs the nodes' costs), so the coordinator builds its
// input from the registered workers.
const SkipPipe = "skippipe"

// SkipPipeFull is GPipe over SkipPipe's placement and microbatches (every
// microbatch visits every stage; scheduler.SkipPipeFull): the like-for-like
// baseline of "skippipe" on a heterogeneous cluster, where stages may have
// different node counts.
const SkipPipeFull = "skippipe-full"

// isSkipPipe reports whether name is planned by the SkipPipe planner.
func isSkipPipe(name string) bool { return name == SkipPipe || name == SkipPipeFull }

// knownSchedule reports whether name can be planned.
func knownSchedule(name string) error {
	if isSkipPipe(name) {
		return nil
	}
	_, err := scheduler.Lookup(name)
	return err
}

// buildPlan asks the scheduler for cfg's schedule over members (sorted by
// name) and returns the plan, the members in plan-worker order and the
// model layout. Placement and schedule choice are the scheduler's: classic
// schedules place worker id rank*replicas+replica on members[id];
// SkipPipe places nodes itself. This only checks that the plan fits the
// model the workers will build.
func buildPlan(cfg *Config, members []etcdx.Member, epoch int64) (*scheduler.Plan, []etcdx.Member, model.Layout, error) {
	return buildPlanFrom(cfg, members, epoch, nil)
}

// buildPlanFrom is buildPlan; prev, when set, is the plan being replaced
// (SkipPipe keeps its placement).
func buildPlanFrom(cfg *Config, members []etcdx.Member, epoch int64, prev *scheduler.Plan) (*scheduler.Plan, []etcdx.Member, model.Layout, error) {
	names := make([]string, len(members))
	for i, m := range members {
		names[i] = m.Name
	}
	var p *scheduler.Plan
	var err error
	if isSkipPipe(cfg.Schedule) {
		p, err = skipPipePlan(cfg, names, prev)
	} else {
		p, err = scheduler.Generate(cfg.Schedule, scheduler.Spec{
			Stages: cfg.Stages, Replicas: cfg.Workers / cfg.Stages,
			Microbatches: cfg.Train.Microbatches, Layers: cfg.Train.Model.Layers,
			Samples: cfg.Train.MicrobatchSize, Nodes: names, Epoch: epoch,
		})
		if err == nil {
			p, err = balanceStages(cfg, p)
		}
	}
	if err != nil {
		return nil, nil, 0, fmt.Errorf("coordinator: build %s plan: %w", cfg.Schedule, err)
	}
	return checkPlan(cfg, p, members, epoch)
}

// checkPlan validates a generated plan against the model and orders the
// members as the plan's workers (by node name).
func checkPlan(cfg *Config, p *scheduler.Plan, members []etcdx.Member, epoch int64) (*scheduler.Plan, []etcdx.Member, model.Layout, error) {
	p.Epoch = epoch
	if err := scheduler.Validate(p); err != nil {
		return nil, nil, 0, fmt.Errorf("coordinator: %s plan is invalid: %w", cfg.Schedule, err)
	}
	if len(p.Workers) != len(members) {
		return nil, nil, 0, fmt.Errorf("coordinator: %s plan has %d workers, %d registered", cfg.Schedule, len(p.Workers), len(members))
	}
	byName := map[string]etcdx.Member{}
	for _, m := range members {
		byName[m.Name] = m
	}
	ordered := make([]etcdx.Member, len(p.Workers))
	for i, w := range p.Workers {
		m, ok := byName[w.Node]
		if !ok {
			return nil, nil, 0, fmt.Errorf("coordinator: plan worker %d runs on %q, which is not a registered worker (or is used twice)", i, w.Node)
		}
		ordered[i] = m
		delete(byName, w.Node)
	}
	layout := model.HeadLast
	if p.HeadStage == 0 && len(p.Stages) > 1 {
		layout = model.HeadFirst
	}
	specs, err := model.Split(cfg.Train.Model.Layers, len(p.Stages), layout)
	if err != nil {
		return nil, nil, 0, fmt.Errorf("coordinator: %w", err)
	}
	if cfg.Balance {
		// Any contiguous split: the workers load the plan's ranges.
		if err := checkRanges(p, cfg.Train.Model.Layers); err != nil {
			return nil, nil, 0, err
		}
		specs = nil
	}
	for i, st := range p.Stages {
		if specs != nil && (st.FirstLayer != specs[i].Lo || st.FirstLayer+st.Layers != specs[i].Hi) {
			return nil, nil, 0, fmt.Errorf("coordinator: plan stage %d holds layers [%d,%d), the model's split gives [%d,%d)",
				i, st.FirstLayer, st.FirstLayer+st.Layers, specs[i].Lo, specs[i].Hi)
		}
	}
	for mb, m := range p.Microbatches {
		if m.Samples != cfg.Train.MicrobatchSize {
			return nil, nil, 0, fmt.Errorf("coordinator: plan microbatch %d has %d samples, want %d", mb, m.Samples, cfg.Train.MicrobatchSize)
		}
	}
	if err := scheduler.OverrideAllReduce(p, cfg.AllReduce); err != nil {
		return nil, nil, 0, fmt.Errorf("coordinator: %w", err)
	}
	if err := chooseAllReduce(cfg, p); err != nil {
		return nil, nil, 0, err
	}
	return p, ordered, layout, nil
}

// chooseAllReduce sets each replicated stage's all-reduce algorithm to
// the cheaper of ring and direct under the planning cost model, with the
// plan's per-stage gradient sizes for the model trained (costmodel.ChooseAllReduce:
// the simulator's prices, which the emulated links reproduce). Without a
// cost model, or with one that does not know the plan's nodes, the plan
// keeps the ring.
func chooseAllReduce(cfg *Config, p *scheduler.Plan) error {
	costs, err := cfg.planningCosts()
	if err != nil || costs == nil {
		return err
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
	k, err := ForPlan(costs, p, cfg.Train.Model)
	if err != nil {
		return err
	}
	if _, err := costmodel.ChooseAllReduce(p, k); err != nil {
		return fmt.Errorf("coordinator: choose all-reduce algorithms: %w", err)
	}
	return nil
}

// skipPipePlan plans the SkipPipe variant (scheduler.SkipPipeCA for
// "skippipe", scheduler.SkipPipeFull for "skippipe-full") over the named
// nodes from the planning cost model (see skipPipeInput); prev fixes the
// placement on a replan.
func skipPipePlan(cfg *Config, names []string, prev *scheduler.Plan) (*scheduler.Plan, error) {
	sc, err := skipPipeInput(cfg, names, prev)
	if err != nil {
		return nil, err
	}
	variant := scheduler.SkipPipeCA
	if cfg.Schedule == SkipPipeFull {
		variant = scheduler.SkipPipeFull
	}
	p, _, err := scheduler.PlanSkipPipeVariant(variant, sc)
	return p, err
}

// storePlan writes the plan's JSON to dir/plans/<sha256>.json (atomically,
// once per content) and returns the JSON, its path and its hash.
func storePlan(dir string, p *scheduler.Plan) ([]byte, string, string, error) {
	var buf bytes.Buffer
	if err := scheduler.Encode(&buf, p); err != nil {
		return nil, "", "", fmt.Errorf("coordinator: encode plan: %w", err)
	}
	sum := sha256.Sum256(buf.Bytes())
	h := hex.EncodeToString(sum[:])
	pdir := filepath.Join(dir, "plans")
	if err := os.MkdirAll(pdir, 0o755); err != nil {
		return nil, "", "", fmt.Errorf("coordinator: %w", err)
	}
	path := filepath.Join(pdir, h+".json")
	if _, err := os.Stat(path); err == nil {
		return buf.Bytes(), path, h, nil
	}
	if err := writeAtomic(path, buf.Bytes()); err != nil {
		return nil, "", "", err
	}
	return buf.Bytes(), path, h, nil
}

// writeAtomic writes data to path through a temporary file and a rename,
// so a crash never leaves a half-written file under the final name.
func writeAtomic(path string, data []byte) error {
	if err := atomicfile.Write(path, data, atomicfile.Options{}); err != nil {
		return fmt.Errorf("coordinator: %w", err)
	}
	return nil
}
