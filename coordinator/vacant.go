package coordinator

import (
	"bytes"
	"context"
	"fmt"
	"path/filepath"
	"strconv"

	"stagecoach/internal/atomicfile"
	"stagecoach/internal/metrics"
	"stagecoach/model"
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

// fillVacant writes, into the checkpoint directory of step under base, the
// shard of every stage the current plan leaves vacant, taken from the
// newest usable listed checkpoint whose copy of it verifies (or the
// seeded initial state when none is listed) and restamped with step. It
// returns the files written with their digests.
func (r *run) fillVacant(ctx context.Context, base string, step int64) ([]ShardDigest, error) {
	vacant := r.plan.VacantStages()
	if len(vacant) == 0 {
		return nil, nil
	}
	listed, err := r.usableCheckpoints(ctx)
	if err != nil {
		return nil, err
	}
	root := r.root()
	dir, err := root.MkdirAll(worker.StepDir(base, step))
	if err != nil {
		return nil, fmt.Errorf("coordinator: %w", err)
	}
	var out []ShardDigest
	for _, s := range vacant {
		tensors, meta, err := r.vacantSource(listed, s)
		if err != nil {
			return nil, err
		}
		meta[model.MetaStep] = strconv.FormatInt(step, 10)
		path := filepath.Join(dir, model.ShardFile(s))
		var buf bytes.Buffer
		err = model.WriteSafetensors(&buf, tensors, meta)
		if err == nil {
			err = atomicfile.Write(path, buf.Bytes(), atomicfile.Options{})
		}
		if err != nil {
			return nil, fmt.Errorf("coordinator: vacant stage %d: %w", s, err)
		}
		r.cfg.Logf("stage %d is vacant: carried its state of step %s into %s", s, meta[metaRestoredFrom], path)
		d := model.DigestOf(buf.Bytes())
		out = append(out, ShardDigest{Stage: s, File: path, Size: d.Size, SHA256: d.Hex()})
	}
	return out, atomicfile.SyncDir(dir)
}

// vacantSource reads vacant stage s's state from the newest of listed
// (newest first) whose shard of s matches its digest and parses; a
// damaged one is skipped (logged, counted). With nothing listed it is the
// seeded initial state.
func (r *run) vacantSource(listed []CheckpointManifest, s int) ([]model.STensor, map[string]string, error) {
	if len(listed) == 0 && r.init != nil {
		listed = []CheckpointManifest{*r.init}
	}
	if len(listed) == 0 {
		return r.seededShard(s)
	}
	for i := range listed {
		ck := &listed[i]
		tensors, meta, err := r.readListedShard(ck, s)
		if err != nil {
			r.skipCheckpoint(metrics.SkipCorrupt, fmt.Errorf("checkpoint of step %d for vacant stage %d: %w", ck.Step, s, err))
			continue
		}
		if meta[metaRestoredFrom] == "" {
			meta[metaRestoredFrom] = meta[model.MetaStep]
		}
		return tensors, meta, nil
	}
	return nil, nil, fmt.Errorf("coordinator: vacant stage %d: no listed checkpoint holds a copy of it that verifies", s)
}

// readListedShard reads stage s's shard of a listed checkpoint (checked
// by checkListing) once it matches its size and SHA-256.
func (r *run) readListedShard(ck *CheckpointManifest, s int) ([]model.STensor, map[string]string, error) {
	var want model.Digest
	found := false
	for _, d := range ck.Shards {
		if d.Stage == s {
			dg, err := d.digest()
			if err != nil {
				return nil, nil, err
			}
			want, found = dg, true
		}
	}
	if !found {
		return nil, nil, fmt.Errorf("no digest for stage %d", s)
	}
	dir, err := r.stepDirOf(ck)
	if err != nil {
		return nil, nil, err
	}
	src := filepath.Join(dir, model.ShardFile(s))
	f, err := r.root().Open(src)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	b, err := model.ReadVerified(f, src, want, maxVacantShard(r.cfg.Train.Model, len(r.plan.Stages), s))
	if err != nil {
		return nil, nil, err
	}
	return model.ParseVerified(b, src)
}

// maxVacantShard bounds stage s's shard file: its parameters and both
// moments, plus a header allowance.
func maxVacantShard(mc model.Config, stages, s int) int64 {
	specs, err := model.Split(mc.Layers, stages, model.HeadFirst)
	if err != nil || s >= len(specs) {
		return 0
	}
	sh, err := model.NewShard(mc, specs[s])
	if err != nil {
		return 0
	}
	var states []model.ParamState
	for _, p := range sh.Params() {
		states = append(states, model.ParamState{T: p})
	}
	return model.ShardLimit(states)
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
