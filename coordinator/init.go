package coordinator

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"

	"stagecoach/internal/atomicfile"
	"stagecoach/model"
	"stagecoach/worker"
)

// A job started from a checkpoint (Config.InitFrom) takes that state as
// its starting point where another job takes the seed: the checkpoint is
// cut into the plan's stages by tensor name, written as an ordinary
// checkpoint under <checkpoint root>/init and loaded by the workers
// through LoadCheckpoint with its digests, exactly as a restore loads a
// listed checkpoint. It is the fallback of every restore when no listed
// checkpoint loads (where a job without it falls back to the seed), and
// the job's commits run from the step after it.

// initDir is where the cut of the initial checkpoint goes, under the
// checkpoint root.
const initDir = "init"

// initStep is the step the job starts after: the initial checkpoint's,
// or 0 (the seed, or weights only).
func (c *Config) initStep() int64 {
	if c.InitFrom == nil || c.InitWeightsOnly {
		return 0
	}
	return int64(c.InitFrom.Step)
}

// checkInit checks the initial checkpoint against the job (Validate).
func (c *Config) checkInit() error {
	ck := c.InitFrom
	if ck == nil {
		return nil
	}
	if d := model.ConfigDiff(ck.Model, c.Train.Model); len(d) > 0 {
		return fmt.Errorf("coordinator: the initial checkpoint %s holds another model than the job's (checkpoint≠job): %s", ck.Path, strings.Join(d, ", "))
	}
	if c.InitWeightsOnly {
		// The cut is loaded as the checkpoint of step 0: fresh
		// moments, nothing applied.
		return nil
	}
	if !ck.Moments {
		return fmt.Errorf("coordinator: the initial checkpoint %s holds no optimizer moments: start from its weights only, or export it with them", ck.Path)
	}
	var tc model.TrainConfig
	if raw := ck.Meta[model.MetaTrainConfig]; raw != "" {
		if err := json.Unmarshal([]byte(raw), &tc); err != nil {
			return fmt.Errorf("coordinator: the initial checkpoint %s: bad train_config: %w", ck.Path, err)
		}
		if k := tc.Optim.WithDefaults().Kind; k != c.Train.Optim.Kind {
			return fmt.Errorf("coordinator: the initial checkpoint %s holds %s moments, the job uses %s: start from its weights only, or use %s", ck.Path, k, c.Train.Optim.Kind, k)
		}
	}
	if int64(c.Steps) <= int64(ck.Step) {
		return fmt.Errorf("coordinator: the initial checkpoint %s is at step %d and the job has %d steps in all: raise the steps (they count the checkpoint's) or start from its weights only", ck.Path, ck.Step, c.Steps)
	}
	return nil
}

// initCheckpoint cuts the initial checkpoint into the current plan's
// stages under <root>/init/step-N and returns its manifest, as a
// restore takes it; r.init keeps it for vacant stages.
func (r *run) initCheckpoint() (*CheckpointManifest, error) {
	cfg := r.cfg
	ck := cfg.InitFrom
	step := cfg.initStep()
	root := r.root()
	base := filepath.Join(cfg.CheckpointDir, initDir)
	dir, err := root.MkdirAll(worker.StepDir(base, step))
	if err != nil {
		return nil, fmt.Errorf("coordinator: initial checkpoint: %w", err)
	}
	mc, _ := json.Marshal(cfg.Train.Model)
	tc, _ := json.Marshal(cfg.Train)
	m := &CheckpointManifest{Step: step, Epoch: r.fence.Epoch, Base: base, Dir: dir, DataPosition: r.initialData, Layers: planLayers(r.plan)}
	if pos := ck.Meta[model.MetaDataPosition]; !cfg.InitWeightsOnly && pos != "" {
		m.DataPosition = pos
	}
	meta := map[string]string{
		model.MetaFormat: model.FormatV1, model.MetaModelConfig: string(mc), model.MetaTrainConfig: string(tc),
		model.MetaStep: strconv.FormatInt(step, 10), model.MetaJob: cfg.Job, "init_from": ck.Path,
	}
	// Weights only: the moments stay zero, as a fresh optimizer's.
	if m.Shards, err = r.cutInto(ck, dir, !cfg.InitWeightsOnly, meta); err != nil {
		return nil, fmt.Errorf("coordinator: initial checkpoint, %w", err)
	}
	for _, d := range m.Shards {
		m.Files = append(m.Files, d.File)
	}
	r.init = m
	return m, nil
}

// writeManifest puts a committed checkpoint's listing into its step
// directory (model.ManifestFile), so that its shards carry their digests
// and data position wherever they are copied (eval, export, init). The
// listing in etcd stays the record: a failure here is only logged.
func (r *run) writeManifest(m *CheckpointManifest) {
	dir, err := r.stepDirOf(m)
	if err == nil {
		var b []byte
		if b, err = json.MarshalIndent(m, "", "  "); err == nil {
			err = atomicfile.Write(filepath.Join(dir, model.ManifestFile), append(b, '\n'), atomicfile.Options{})
		}
	}
	if err != nil {
		r.cfg.Logf("checkpoint of step %d: writing its %s: %v", m.Step, model.ManifestFile, err)
	}
}
