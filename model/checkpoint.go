package model

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
)

// Checkpoints are safetensors files. Parameters keep their model names
// ("tok_emb", "blocks.3.w1", ...); optimizer moments are stored as
// "optim.m.<name>" and "optim.v.<name>". Metadata carries the configs, the
// step and whatever the caller adds (the data position, the corpus). A
// whole-model file and per-shard files share this layout, so any shard can
// load its tensors from either, whatever split wrote it.

// Metadata keys written by this package.
const (
	MetaFormat      = "format"
	MetaModelConfig = "model_config"
	MetaTrainConfig = "train_config"
	MetaStep        = "step"
	FormatV1        = "stagecoach-checkpoint-v1"
	// WholeModelFile is the whole-model checkpoint name inside a directory.
	WholeModelFile = "model.safetensors"
)

// ShardFile is the per-shard checkpoint name inside a directory.
func ShardFile(i int) string { return fmt.Sprintf("shard-%d.safetensors", i) }

func sortStates(s []ParamState) {
	sort.Slice(s, func(i, j int) bool { return s[i].T.Index < s[j].T.Index })
}

// SaveStates writes parameters (and their optimizer moments when M is set)
// to path with meta.
func SaveStates(path string, states []ParamState, meta map[string]string) error {
	return WriteSafetensorsFile(path, StateTensors(states), meta)
}

// WriteStates writes what SaveStates writes to w.
func WriteStates(w io.Writer, states []ParamState, meta map[string]string) error {
	return WriteSafetensors(w, StateTensors(states), meta)
}

// StateTensors lists what a checkpoint file of states holds: every
// parameter, then the optimizer moments of those that have them.
func StateTensors(states []ParamState) []STensor {
	var ts []STensor
	for _, st := range states {
		ts = append(ts, STensor{Name: st.T.Name, Shape: st.T.Shape, Data: st.T.W})
	}
	for _, st := range states {
		if st.M != nil {
			ts = append(ts,
				STensor{Name: "optim.m." + st.T.Name, Shape: st.T.Shape, Data: st.M},
				STensor{Name: "optim.v." + st.T.Name, Shape: st.T.Shape, Data: st.V})
		}
	}
	return ts
}

// LoadStates fills states from a checkpoint file: every parameter must be
// present with its exact shape; moments are loaded when withOptim is set
// (and must then be present). Extra tensors are ignored so a shard can load
// from a whole-model file. Returns the file's metadata.
func LoadStates(path string, states []ParamState, withOptim bool) (map[string]string, error) {
	f, err := OpenSafetensors(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	// Every shape is checked before any tensor is read: a file that does
	// not fit the model costs only its header.
	check := func(name string, shape []int) error {
		got, ok := f.Shape(name)
		if !ok {
			return fmt.Errorf("%s: tensor %q missing", path, name)
		}
		if !sameShape(got, shape) {
			return fmt.Errorf("%s: tensor %q has shape %v, model wants %v", path, name, got, shape)
		}
		return nil
	}
	type load struct {
		name string
		dst  []float32
	}
	var loads []load
	for _, st := range states {
		mine := []load{{st.T.Name, st.T.W}}
		if withOptim {
			mine = append(mine, load{"optim.m." + st.T.Name, st.M}, load{"optim.v." + st.T.Name, st.V})
		}
		for _, l := range mine {
			if err := check(l.name, st.T.Shape); err != nil {
				return nil, err
			}
		}
		loads = append(loads, mine...)
	}
	for _, l := range loads {
		if err := f.Read(l.name, l.dst); err != nil {
			return nil, err
		}
	}
	return f.Meta, nil
}

func sameShape(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// Meta returns the trainer's checkpoint metadata merged with extra.
func (t *Trainer) Meta(extra map[string]string) map[string]string {
	mc, _ := json.Marshal(t.Cfg.Model)
	tc, _ := json.Marshal(t.Cfg)
	meta := map[string]string{
		MetaFormat:      FormatV1,
		MetaModelConfig: string(mc),
		MetaTrainConfig: string(tc),
		MetaStep:        strconv.Itoa(t.Step),
	}
	for k, v := range extra {
		meta[k] = v
	}
	return meta
}

// Save writes dir/model.safetensors (whole model) and one
// dir/shard-<i>.safetensors per shard, each with optimizer state and the
// metadata (configs, step, plus extra such as the data position).
func (t *Trainer) Save(dir string, extra map[string]string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	meta := t.Meta(extra)
	if err := SaveStates(filepath.Join(dir, WholeModelFile), t.States(), meta); err != nil {
		return err
	}
	for i, o := range t.Opts {
		m := map[string]string{"shard": strconv.Itoa(i)}
		for k, v := range meta {
			m[k] = v
		}
		if err := SaveStates(filepath.Join(dir, ShardFile(i)), o.States, m); err != nil {
			return err
		}
	}
	return nil
}

// LoadTrainer restores a trainer from a checkpoint file (whole-model or,
// for a one-shard model, a shard file) so that training resumes exactly. It
// returns the metadata for the caller's own keys (data position).
func LoadTrainer(path string) (*Trainer, map[string]string, error) {
	return loadTrainer(path, DefaultLimits)
}

// loadTrainer is LoadTrainer under lim.
func loadTrainer(path string, lim Limits) (*Trainer, map[string]string, error) {
	meta, err := ReadSafetensorsMeta(path)
	if err != nil {
		return nil, nil, err
	}
	if meta[MetaFormat] != FormatV1 {
		return nil, nil, fmt.Errorf("%s: not a stagecoach checkpoint (format %q)", path, meta[MetaFormat])
	}
	var cfg TrainConfig
	if err := json.Unmarshal([]byte(meta[MetaTrainConfig]), &cfg); err != nil {
		return nil, nil, fmt.Errorf("%s: bad train_config: %w", path, err)
	}
	step, err := strconv.Atoi(meta[MetaStep])
	if err != nil || step < 0 {
		return nil, nil, fmt.Errorf("%s: bad step %q", path, meta[MetaStep])
	}
	if err := checkMetaModel(cfg.Model, lim, cfg.MicrobatchSize); err != nil {
		return nil, nil, fmt.Errorf("%s: train_config: %w", path, err)
	}
	t, err := NewTrainer(cfg)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	if _, err := LoadStates(path, t.States(), true); err != nil {
		return nil, nil, err
	}
	t.Step = step
	return t, meta, nil
}

// checkMetaModel validates a model config read from a checkpoint's
// metadata, and refuses one beyond lim, before anything is allocated for
// it.
func checkMetaModel(c Config, lim Limits, batch int) error {
	c = c.WithDefaults()
	if err := c.Validate(); err != nil {
		return err
	}
	return c.CheckLimits(lim, batch)
}

// LoadPipeline loads a checkpoint's weights (no optimizer state) into a
// model split into stages shards, for evaluation.
func LoadPipeline(path string, stages int, layout Layout) (*Pipeline, map[string]string, error) {
	meta, err := ReadSafetensorsMeta(path)
	if err != nil {
		return nil, nil, err
	}
	if meta[MetaFormat] != FormatV1 {
		return nil, nil, fmt.Errorf("%s: not a stagecoach checkpoint (format %q)", path, meta[MetaFormat])
	}
	var cfg Config
	if err := json.Unmarshal([]byte(meta[MetaModelConfig]), &cfg); err != nil {
		return nil, nil, fmt.Errorf("%s: bad model_config: %w", path, err)
	}
	if err := checkMetaModel(cfg, DefaultLimits, 1); err != nil {
		return nil, nil, fmt.Errorf("%s: model_config: %w", path, err)
	}
	p, err := NewPipeline(cfg, stages, layout)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	var states []ParamState
	for _, t := range p.Params() {
		states = append(states, ParamState{T: t})
	}
	if _, err := LoadStates(path, states, false); err != nil {
		return nil, nil, err
	}
	return p, meta, nil
}
