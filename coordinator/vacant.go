package coordinator

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"stagecoach/internal/atomicfile"
	"stagecoach/model"
	"stagecoach/scheduler"
	"stagecoach/worker"
)

// Vacant stages (SkipPipe). When a stage loses its last worker, the plan
// leaves it vacant and every path skips it; its parameters stay as the
// newest checkpoint has them. So that every checkpoint still holds every
// stage (a restore or a failover needs all of them), each checkpoint taken
// during the vacancy carries that shard forward, restamped with the new
// step, and the hand-off that gives the stage to a joining worker does the
// same: the joiner loads the stage from the newest checkpoint. Before the
// first checkpoint the stage's state is the seeded initial one.

// metaRestoredFrom names, in a carried-forward shard, the step whose
// state it holds.
const metaRestoredFrom = "restored_from_step"

// stageList is the model's stage split as plan stages.
func stageList(layers, stages int) ([]scheduler.Stage, error) {
	specs, err := model.Split(layers, stages, model.HeadFirst)
	if err != nil {
		return nil, fmt.Errorf("coordinator: %w", err)
	}
	out := make([]scheduler.Stage, len(specs))
	for i, sp := range specs {
		out[i] = scheduler.Stage{FirstLayer: sp.Lo, Layers: sp.Hi - sp.Lo}
	}
	return out, nil
}

// fillVacant writes, into the checkpoint directory of step under base, the
// shard of every stage the current plan leaves vacant, taken from the
// newest listed checkpoint (or the seeded initial state) and restamped
// with step. It returns the files written.
func (r *run) fillVacant(ctx context.Context, base string, step int64) ([]string, error) {
	vacant := r.plan.VacantStages()
	if len(vacant) == 0 {
		return nil, nil
	}
	ck, err := latestCheckpoint(ctx, r.leader)
	if err != nil {
		return nil, err
	}
	dir := worker.StepDir(base, step)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("coordinator: %w", err)
	}
	var files []string
	for _, s := range vacant {
		var tensors []model.STensor
		var meta map[string]string
		if ck != nil {
			src := filepath.Join(worker.StepDir(ck.Base, ck.Step), model.ShardFile(s))
			if tensors, meta, err = model.ReadSafetensorsFile(src); err != nil {
				return nil, fmt.Errorf("coordinator: vacant stage %d: %w", s, err)
			}
			if meta[metaRestoredFrom] == "" {
				meta[metaRestoredFrom] = meta[model.MetaStep]
			}
		} else if tensors, meta, err = r.seededShard(s); err != nil {
			return nil, err
		}
		meta[model.MetaStep] = strconv.FormatInt(step, 10)
		path := filepath.Join(dir, model.ShardFile(s))
		var buf bytes.Buffer
		err := model.WriteSafetensors(&buf, tensors, meta)
		if err == nil {
			err = atomicfile.Write(path, buf.Bytes(), atomicfile.Options{})
		}
		if err != nil {
			return nil, fmt.Errorf("coordinator: vacant stage %d: %w", s, err)
		}
		r.cfg.Logf("stage %d is vacant: carried its state of step %s into %s", s, meta[metaRestoredFrom], path)
		files = append(files, path)
	}
	return files, atomicfile.SyncDir(dir)
}

// seededShard is stage s's initial state as a freshly configured worker
// holds it: the seeded parameters and zero optimizer moments.
func (r *run) seededShard(s int) ([]model.STensor, map[string]string, error) {
	specs, err := model.Split(r.cfg.Train.Model.Layers, len(r.plan.Stages), model.HeadFirst)
	if err != nil {
		return nil, nil, fmt.Errorf("coordinator: %w", err)
	}
	sh, err := model.NewShard(r.cfg.Train.Model, specs[s])
	if err != nil {
		return nil, nil, fmt.Errorf("coordinator: seeded stage %d: %w", s, err)
	}
	opt, err := model.NewOptimizer(r.cfg.Train.Optim, sh.Params())
	if err != nil {
		return nil, nil, fmt.Errorf("coordinator: seeded stage %d: %w", s, err)
	}
	return model.StateTensors(opt.States), map[string]string{model.MetaFormat: model.FormatV1, metaRestoredFrom: "0"}, nil
}
