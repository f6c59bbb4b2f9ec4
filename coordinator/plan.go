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
	"stagecoach/planner"
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

// family is the planner's registry entry of the job's schedule.
func family(cfg *Config) (planner.Family, error) {
	f, err := planner.Lookup(cfg.Schedule)
	if err != nil {
		return f, fmt.Errorf("coordinator: %w", err)
	}
	return f, nil
}

// snapshot is what the planner needs of the job: its rules, the planning
// cost model and the simulator to score candidates with. The caller adds
// the members (or their stages), the previous plan and the epoch.
func snapshot(cfg *Config, epoch int64) (planner.Snapshot, error) {
	costs, err := cfg.planningCosts()
	if err != nil {
		return planner.Snapshot{}, err
	}
	m := cfg.Train.Model
	s := planner.Snapshot{
		Schedule: cfg.Schedule, Costs: costs, Epoch: epoch,
		Rules: planner.Rules{
			Stages: cfg.Stages, Workers: cfg.Workers, StageSizes: cfg.clusterStageSizes(),
			Microbatches: cfg.Train.Microbatches, Layers: cfg.Train.Model.Layers, Samples: cfg.Train.MicrobatchSize,
			Seed: int64(cfg.Train.Model.Seed), Model: &m, AllReduce: cfg.AllReduce,
		},
	}
	if simr := cfg.Simulator; simr != nil && costs != nil {
		s.Simulate = func(p *scheduler.Plan, k *costmodel.Cluster) (float64, error) {
			r, err := simr.Simulate(p, k, false)
			if err != nil {
				return 0, err
			}
			return r.IterationTimeS, nil
		}
	}
	return s, nil
}

// buildPlan asks the planner for cfg's schedule over members (sorted by
// name) and returns the plan, the members in plan-worker order and the
// model layout. Placement and schedule choice are the planner's: classic
// schedules place worker id rank*replicas+replica on members[id];
// SkipPipe places nodes itself. This only checks that the plan fits the
// model the workers will build.
func buildPlan(cfg *Config, members []etcdx.Member, epoch int64) (*scheduler.Plan, []etcdx.Member, model.Layout, error) {
	return buildPlanFrom(cfg, members, epoch, nil)
}

// buildPlanFrom is buildPlan; prev, when set, is the plan being replaced
// (SkipPipe keeps its placement).
func buildPlanFrom(cfg *Config, members []etcdx.Member, epoch int64, prev *scheduler.Plan) (*scheduler.Plan, []etcdx.Member, model.Layout, error) {
	s, err := snapshot(cfg, epoch)
	if err != nil {
		return nil, nil, 0, err
	}
	s.Members, s.Prev = names(members), prev
	p, err := planner.Plan(s)
	if err != nil {
		return nil, nil, 0, fmt.Errorf("coordinator: build %s plan: %w", cfg.Schedule, err)
	}
	// --balance (refused for SkipPipe) re-sizes the stages' layer ranges.
	if p, err = balanceStages(cfg, p); err != nil {
		return nil, nil, 0, err
	}
	return checkPlan(cfg, p, members, epoch)
}

// planOnPartition plans cfg's schedule with parts[s] holding stage s
// (stages may be short of their configured size after a loss, or empty:
// vacant); prev is the plan being replaced (its stages' layer ranges).
func planOnPartition(cfg *Config, parts [][]etcdx.Member, epoch int64, prev *scheduler.Plan) (*scheduler.Plan, []etcdx.Member, model.Layout, error) {
	s, err := snapshot(cfg, epoch)
	if err != nil {
		return nil, nil, 0, err
	}
	s.Prev = prev
	s.Parts = make([][]string, len(parts))
	var all []etcdx.Member
	for st, ms := range parts {
		s.Parts[st] = names(ms)
		all = append(all, ms...)
	}
	p, err := planner.Plan(s)
	if err != nil {
		return nil, nil, 0, fmt.Errorf("coordinator: %w", err)
	}
	return checkPlan(cfg, p, all, epoch)
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
	return p, ordered, layout, nil
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
