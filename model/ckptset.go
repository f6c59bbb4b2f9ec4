package model

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"stagecoach/internal/atomicfile"
)

// A checkpoint users carry is either one whole-model file (what `train`
// and `export` write) or a shard set: a directory of shard-<i>.safetensors
// files, one per stage, as a distributed job writes them. OpenCheckpoint
// takes either and checks that the files together hold the model exactly
// once before anything of their tensors is read, so eval, export and a
// job started from a checkpoint see one whole model whatever split wrote
// it.

// ManifestFile, in a job's step directory, is the checkpoint's listing as
// the job committed it (the coordinator writes it after the commit): the
// step, the data position and every shard's size and SHA-256.
const ManifestFile = "manifest.json"

// Metadata keys a shard file may carry that describe only that file; a
// shard set's merged metadata drops them.
var perShardMeta = map[string]bool{"stage": true, "shard": true, "first_layer": true, "layers": true, "restored_from_step": true}

// MetaJob names the job that wrote a shard (a distributed job's shards).
const MetaJob = "job"

// MetaDataPosition is the sampler state after the checkpoint's step.
const MetaDataPosition = "data_position"

// maxShardFiles bounds the files of a shard set: a stage holds at least
// one layer, and there are at most MaxLayers.
const maxShardFiles = MaxLayers

// maxManifestBytes bounds a manifest.json.
const maxManifestBytes = 4 << 20

// TensorEntry is one tensor of a file's header: its name and shape.
type TensorEntry struct {
	Name  string
	Shape []int
}

// FileTensors lists the tensors one file of a checkpoint holds.
type FileTensors struct {
	File    string
	Tensors []TensorEntry
}

// Moment tensor name prefixes.
const (
	momentM = "optim.m."
	momentV = "optim.v."
)

// ModelShapes lists every parameter of the model c in canonical order with
// its shape.
func ModelShapes(c Config) []TensorEntry {
	c = c.WithDefaults()
	D, H := c.Dim, c.Hidden
	out := []TensorEntry{{"tok_emb", []int{c.Vocab, D}}, {"pos_emb", []int{c.Ctx, D}}}
	for l := 0; l < c.Layers; l++ {
		shapes := [perBlock][]int{{D}, {D, 3 * D}, {D, D}, {D}, {D, H}, {H, D}}
		for j, n := range blockTensorNames {
			out = append(out, TensorEntry{fmt.Sprintf("blocks.%d.%s", l, n), shapes[j]})
		}
	}
	return append(out, TensorEntry{"norm_f", []int{D}}, TensorEntry{"head", []int{D, c.Vocab}})
}

// SpecTensorNames lists the parameters a shard of spec holds, in
// canonical order (NewShard's, without building it).
func SpecTensorNames(c Config, spec ShardSpec) []string {
	var out []string
	if spec.Embed {
		out = append(out, "tok_emb", "pos_emb")
	}
	for l := spec.Lo; l < spec.Hi; l++ {
		for _, n := range blockTensorNames {
			out = append(out, fmt.Sprintf("blocks.%d.%s", l, n))
		}
	}
	if spec.Head {
		out = append(out, "norm_f", "head")
	}
	return out
}

// CheckCover checks that files together hold the model c exactly once:
// every parameter in exactly one file with the model's shape, nothing
// that is not the model's, and optimizer moments either for every
// parameter (both, beside it in its file) or for none. It returns the
// index in files of each tensor's holder and whether moments are there.
// Errors name the file and the tensor.
func CheckCover(c Config, files []FileTensors) (map[string]int, bool, error) {
	want := map[string][]int{}
	var order []string
	for _, e := range ModelShapes(c) {
		want[e.Name] = e.Shape
		order = append(order, e.Name)
	}
	owner := map[string]int{}
	moments := false
	for i, f := range files {
		for _, t := range f.Tensors {
			base := t.Name
			if rest, ok := strings.CutPrefix(base, momentM); ok {
				base, moments = rest, true
			} else if rest, ok := strings.CutPrefix(base, momentV); ok {
				base, moments = rest, true
			}
			shape, ok := want[base]
			if !ok {
				return nil, false, fmt.Errorf("%s: tensor %q is not part of the model (%d layers, dim %d)", f.File, t.Name, c.Layers, c.Dim)
			}
			if !sameShape(t.Shape, shape) {
				return nil, false, fmt.Errorf("%s: tensor %q has shape %v, the model's is %v", f.File, t.Name, t.Shape, shape)
			}
			if prev, dup := owner[t.Name]; dup {
				if prev == i {
					return nil, false, fmt.Errorf("%s: tensor %q appears twice", f.File, t.Name)
				}
				return nil, false, fmt.Errorf("tensor %q is in both %s and %s: the files overlap", t.Name, files[prev].File, f.File)
			}
			owner[t.Name] = i
		}
	}
	var missing []string
	for _, n := range order {
		if _, ok := owner[n]; !ok {
			missing = append(missing, n)
		}
	}
	if len(missing) > 0 {
		more := ""
		if len(missing) > 4 {
			more = fmt.Sprintf(" and %d more", len(missing)-4)
			missing = missing[:4]
		}
		return nil, false, fmt.Errorf("no file holds tensor %s%s: the files do not cover the model (%d layers)", strings.Join(quoteAll(missing), ", "), more, c.Layers)
	}
	if moments {
		for _, n := range order {
			w := owner[n]
			for _, m := range []string{momentM + n, momentV + n} {
				o, ok := owner[m]
				switch {
				case !ok:
					return nil, false, fmt.Errorf("%s: holds %q but not its optimizer moment %q (other tensors have theirs)", files[w].File, n, m)
				case o != w:
					return nil, false, fmt.Errorf("%s holds %q but %s holds its moment %q", files[w].File, n, files[o].File, m)
				}
			}
		}
	}
	return owner, moments, nil
}

func quoteAll(s []string) []string {
	out := make([]string, len(s))
	for i, x := range s {
		out[i] = strconv.Quote(x)
	}
	return out
}

// Checkpoint is a whole model's state as one file or a shard set holds
// it, checked by OpenCheckpoint.
type Checkpoint struct {
	// Path is what was opened: a file or a directory.
	Path string
	// Files are the files holding the model (one for a whole-model file;
	// a shard set's by shard number).
	Files []string
	// Meta is the metadata the files agree on, without the keys that
	// describe one shard (stage, first_layer, ...), plus the data
	// position from the job's manifest when the files lack it.
	Meta map[string]string
	// Model is the model config the files carry.
	Model Config
	// Step is the optimizer steps the state has taken.
	Step int
	// Moments tells whether the files hold optimizer moments.
	Moments bool
	// Verified says what the files' SHA-256 were checked against:
	// SumsFile, ManifestFile, or "" (nothing to check against: a shard
	// set without either).
	Verified string
	// Sharded is true for a shard set.
	Sharded bool

	owner map[string]int
	names []FileTensors
}

// OpenCheckpoint opens a checkpoint: a whole-model file, a directory
// holding model.safetensors, or a directory of shard-<i>.safetensors (a
// shard set). A whole-model file must be listed in the SHA256SUMS beside
// it (VerifyFile). A shard set's files are checked against the SHA256SUMS
// in their directory, or else against the job's manifest.json there;
// with neither, Verified is "". The files' metadata must agree (format,
// step, job, model config, train config) and together they must hold the
// model exactly once (CheckCover). Only headers are read.
func OpenCheckpoint(path string) (*Checkpoint, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	c := &Checkpoint{Path: path}
	var dir string
	switch {
	case !st.IsDir():
		c.Files = []string{path}
	default:
		dir = path
		whole := filepath.Join(path, WholeModelFile)
		if _, err := os.Stat(whole); err == nil {
			c.Files = []string{whole}
			break
		}
		if c.Files, err = shardFiles(path); err != nil {
			return nil, err
		}
		c.Sharded = true
	}
	var manifest *stepManifest
	switch {
	case !c.Sharded:
		if err := VerifyFile(c.Files[0]); err != nil {
			return nil, err
		}
		c.Verified = SumsFile
	default:
		if _, err := os.Stat(filepath.Join(dir, SumsFile)); err == nil {
			for _, f := range c.Files {
				if err := VerifyFile(f); err != nil {
					return nil, err
				}
			}
			c.Verified = SumsFile
		} else if manifest, err = readStepManifest(filepath.Join(dir, ManifestFile)); err != nil {
			return nil, err
		} else if manifest != nil {
			if err := manifest.verify(dir, c.Files); err != nil {
				return nil, err
			}
			c.Verified = ManifestFile
		}
	}
	metas := make([]map[string]string, len(c.Files))
	for i, f := range c.Files {
		sf, err := OpenSafetensors(f)
		if err != nil {
			return nil, err
		}
		ft := FileTensors{File: f}
		for _, n := range sf.Names() {
			shape, _ := sf.Shape(n)
			ft.Tensors = append(ft.Tensors, TensorEntry{n, shape})
		}
		metas[i] = sf.Meta
		sf.Close()
		c.names = append(c.names, ft)
	}
	if err := c.mergeMeta(metas); err != nil {
		return nil, err
	}
	if manifest != nil {
		if int64(c.Step) != manifest.Step {
			return nil, fmt.Errorf("%s: the shards are of step %d, the manifest of step %d", dir, c.Step, manifest.Step)
		}
		if c.Meta[MetaDataPosition] == "" && manifest.DataPosition != "" {
			c.Meta[MetaDataPosition] = manifest.DataPosition
		}
	}
	if c.owner, c.Moments, err = CheckCover(c.Model, c.names); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// shardFiles lists dir's shard-<i>.safetensors by i.
func shardFiles(dir string) ([]string, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	type shard struct {
		n    int
		path string
	}
	var found []shard
	for _, e := range ents {
		num, ok := strings.CutPrefix(e.Name(), "shard-")
		if !ok {
			continue
		}
		if num, ok = strings.CutSuffix(num, ".safetensors"); !ok {
			continue
		}
		n, err := strconv.Atoi(num)
		if err != nil || n < 0 || strconv.Itoa(n) != num {
			return nil, fmt.Errorf("%s: %s is not named shard-<number>.safetensors", dir, e.Name())
		}
		if !e.Type().IsRegular() {
			return nil, fmt.Errorf("%s: %s is not a regular file", dir, e.Name())
		}
		if len(found) == maxShardFiles {
			return nil, fmt.Errorf("%s: more than %d shard files", dir, maxShardFiles)
		}
		found = append(found, shard{n, filepath.Join(dir, e.Name())})
	}
	if len(found) == 0 {
		return nil, fmt.Errorf("%s: no %s and no shard-<i>.safetensors: not a checkpoint directory", dir, WholeModelFile)
	}
	sort.Slice(found, func(i, j int) bool { return found[i].n < found[j].n })
	out := make([]string, len(found))
	for i, s := range found {
		out[i] = s.path
	}
	return out, nil
}

// mergeMeta checks that the files' metadata agree and keeps what they
// share.
func (c *Checkpoint) mergeMeta(metas []map[string]string) error {
	// Keys every file that has them must agree on; a carried-forward
	// vacant stage's shard may lack some, but not format and step.
	agree := func(key string, required bool) (string, error) {
		val, from := "", -1
		for i, m := range metas {
			v, ok := m[key]
			if !ok {
				if required {
					return "", fmt.Errorf("%s: no %q in its metadata: not a stagecoach checkpoint", c.Files[i], key)
				}
				continue
			}
			if from >= 0 && v != val {
				return "", fmt.Errorf("%s and %s disagree on %s (%q, %q): not one checkpoint", c.Files[from], c.Files[i], key, clip(val), clip(v))
			}
			val, from = v, i
		}
		return val, nil
	}
	for i, m := range metas {
		if m[MetaFormat] != FormatV1 {
			return fmt.Errorf("%s: not a stagecoach checkpoint (format %q)", c.Files[i], m[MetaFormat])
		}
	}
	step, err := agree(MetaStep, true)
	if err != nil {
		return err
	}
	if c.Step, err = strconv.Atoi(step); err != nil || c.Step < 0 {
		return fmt.Errorf("%s: bad step %q", c.Files[0], step)
	}
	if _, err := agree(MetaJob, false); err != nil {
		return err
	}
	if _, err := agree(MetaTrainConfig, false); err != nil {
		return err
	}
	// Model configs are compared parsed: equal configs may be spelled
	// differently (a default left zero).
	have := -1
	for i, m := range metas {
		raw, ok := m[MetaModelConfig]
		if !ok {
			continue
		}
		var mc Config
		if err := json.Unmarshal([]byte(raw), &mc); err != nil {
			return fmt.Errorf("%s: bad model_config: %w", c.Files[i], err)
		}
		mc = mc.WithDefaults()
		if have >= 0 && mc != c.Model {
			return fmt.Errorf("%s and %s hold different models: %s", c.Files[have], c.Files[i], strings.Join(ConfigDiff(c.Model, mc), ", "))
		}
		c.Model, have = mc, i
	}
	if have < 0 {
		return fmt.Errorf("%s: no file carries a model_config", c.Path)
	}
	if err := checkMetaModel(c.Model, DefaultLimits, 1); err != nil {
		return fmt.Errorf("%s: model_config: %w", c.Files[have], err)
	}
	// Every other key is kept when the files that have it agree on it.
	c.Meta = map[string]string{}
	drop := map[string]bool{}
	for _, m := range metas {
		for k, v := range m {
			if perShardMeta[k] || drop[k] {
				continue
			}
			if w, ok := c.Meta[k]; ok && w != v {
				delete(c.Meta, k)
				drop[k] = true
				continue
			}
			c.Meta[k] = v
		}
	}
	mc, _ := json.Marshal(c.Model)
	c.Meta[MetaModelConfig] = string(mc)
	return nil
}

// clip shortens a metadata value for an error message.
func clip(s string) string {
	if len(s) > 80 {
		return s[:80] + "..."
	}
	return s
}

// ConfigDiff names the fields in which two model configs differ, as
// "field a≠b" (JSON names), none when they are equal.
func ConfigDiff(a, b Config) []string {
	var out []string
	add := func(name string, x, y any) {
		if x != y {
			out = append(out, fmt.Sprintf("%s %v≠%v", name, x, y))
		}
	}
	add("vocab", a.Vocab, b.Vocab)
	add("layers", a.Layers, b.Layers)
	add("dim", a.Dim, b.Dim)
	add("heads", a.Heads, b.Heads)
	add("ctx", a.Ctx, b.Ctx)
	add("hidden", a.Hidden, b.Hidden)
	add("seed", a.Seed, b.Seed)
	add("init_std", a.InitStd, b.InitStd)
	return out
}

// Fill reads the checkpoint's tensors into states, each found by name in
// the file holding it: weights, and moments when withOptim (which the
// checkpoint must then hold). Shapes were checked when it was opened.
func (c *Checkpoint) Fill(states []ParamState, withOptim bool) error {
	if withOptim && !c.Moments {
		return fmt.Errorf("%s holds no optimizer moments", c.Path)
	}
	open := map[int]*SafetensorsFile{}
	defer func() {
		for _, f := range open {
			f.Close()
		}
	}()
	read := func(name string, dst []float32) error {
		i, ok := c.owner[name]
		if !ok {
			return fmt.Errorf("%s: tensor %q missing", c.Path, name)
		}
		f := open[i]
		if f == nil {
			var err error
			if f, err = OpenSafetensors(c.Files[i]); err != nil {
				return err
			}
			open[i] = f
		}
		return f.Read(name, dst)
	}
	for _, st := range states {
		if err := read(st.T.Name, st.T.W); err != nil {
			return err
		}
		if withOptim {
			if err := read(momentM+st.T.Name, st.M); err != nil {
				return err
			}
			if err := read(momentV+st.T.Name, st.V); err != nil {
				return err
			}
		}
	}
	return nil
}

// States reads the whole model into fresh states in canonical order (with
// moments when withOptim).
func (c *Checkpoint) States(withOptim bool) ([]ParamState, error) {
	var states []ParamState
	for i, e := range ModelShapes(c.Model) {
		n := 1
		for _, d := range e.Shape {
			n *= d
		}
		st := ParamState{T: &Tensor{Name: e.Name, Index: i, Shape: e.Shape, W: make([]float32, n)}}
		if withOptim {
			st.M, st.V = make([]float32, n), make([]float32, n)
		}
		states = append(states, st)
	}
	return states, c.Fill(states, withOptim)
}

// Pipeline loads the checkpoint's weights into the model split into
// stages shards, for evaluation.
func (c *Checkpoint) Pipeline(stages int, layout Layout) (*Pipeline, error) {
	p, err := NewPipeline(c.Model, stages, layout)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", c.Path, err)
	}
	var states []ParamState
	for _, t := range p.Params() {
		states = append(states, ParamState{T: t})
	}
	return p, c.Fill(states, false)
}

// Export writes the checkpoint as one whole-model file at path, in the
// format Trainer.Save writes (parameters, then moments when withOptim;
// format, model_config, train_config and step in the metadata, and the
// other keys the files agree on), atomically, and lists it in the
// SHA256SUMS beside it (other entries there are kept).
func (c *Checkpoint) Export(path string, withOptim bool) error {
	if c.Meta[MetaTrainConfig] == "" {
		return fmt.Errorf("%s: no train_config in its metadata", c.Path)
	}
	states, err := c.States(withOptim)
	if err != nil {
		return err
	}
	meta := map[string]string{}
	for k, v := range c.Meta {
		meta[k] = v
	}
	meta[MetaFormat] = FormatV1
	meta[MetaStep] = strconv.Itoa(c.Step)
	var buf bytes.Buffer
	if err := WriteStates(&buf, states, meta); err != nil {
		return err
	}
	if err := atomicfile.Write(path, buf.Bytes(), atomicfile.Options{}); err != nil {
		return err
	}
	// Readable by others, as Trainer.Save's files: an export is made to
	// be carried.
	if err := os.Chmod(path, 0o644); err != nil {
		return err
	}
	return AddSum(path)
}

// AddSum lists path in the SHA256SUMS of its directory, replacing an
// entry of the same name and keeping the others.
func AddSum(path string) error {
	dir, name := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	sums := filepath.Join(dir, SumsFile)
	var keep []string
	if b, err := os.ReadFile(sums); err == nil {
		if len(b) > maxSumsBytes {
			return fmt.Errorf("%s is over %d bytes", sums, maxSumsBytes)
		}
		for _, line := range strings.Split(string(b), "\n") {
			if _, file, ok := strings.Cut(line, "  "); ok && strings.TrimPrefix(file, "*") != name {
				keep = append(keep, line)
			}
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return err
	}
	sum, err := hashFile(path)
	if err != nil {
		return err
	}
	keep = append(keep, fmt.Sprintf("%x  %s", sum, name))
	if err := atomicfile.Write(sums, []byte(strings.Join(keep, "\n")+"\n"), atomicfile.Options{}); err != nil {
		return err
	}
	return os.Chmod(sums, 0o644)
}

// stepManifest is the part of a job's manifest.json a reader of the
// step directory uses.
type stepManifest struct {
	Step         int64  `json:"step"`
	DataPosition string `json:"data_position"`
	Shards       []struct {
		Stage  int    `json:"stage"`
		File   string `json:"file"`
		Size   int64  `json:"size"`
		SHA256 string `json:"sha256"`
	} `json:"shards"`
}

// readStepManifest reads path; nil when there is none.
func readStepManifest(path string) (*stepManifest, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxManifestBytes+1))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if len(b) > maxManifestBytes {
		return nil, fmt.Errorf("%s is over %d bytes", path, maxManifestBytes)
	}
	var m stepManifest
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &m, nil
}

// verify checks every shard file of dir against the manifest: each
// listed by its stage's name with the size and SHA-256 on disk, and no
// shard file unlisted.
func (m *stepManifest) verify(dir string, files []string) error {
	mf := filepath.Join(dir, ManifestFile)
	listed := map[string]int{}
	for i, s := range m.Shards {
		name := ShardFile(s.Stage)
		if filepath.Base(s.File) != name {
			return fmt.Errorf("%s: stage %d's shard is %s, not %s", mf, s.Stage, s.File, name)
		}
		listed[name] = i
	}
	for _, f := range files {
		i, ok := listed[filepath.Base(f)]
		if !ok {
			return fmt.Errorf("%s: not listed in %s", f, mf)
		}
		s := m.Shards[i]
		sum, err := hex.DecodeString(s.SHA256)
		if err != nil || len(sum) != 32 {
			return fmt.Errorf("%s: stage %d's SHA-256 %q is not one", mf, s.Stage, s.SHA256)
		}
		fi, err := os.Stat(f)
		if err != nil {
			return err
		}
		if fi.Size() != s.Size {
			return fmt.Errorf("%w: %s is %d bytes, %s says %d", ErrCorrupt, f, fi.Size(), mf, s.Size)
		}
		got, err := hashFile(f)
		if err != nil {
			return err
		}
		if !bytes.Equal(got, sum) {
			return fmt.Errorf("%w: %s: SHA-256 %x, %s says %s", ErrCorrupt, f, got, mf, s.SHA256)
		}
	}
	if len(files) < len(m.Shards) {
		return fmt.Errorf("%s lists %d shards, the directory holds %d", mf, len(m.Shards), len(files))
	}
	return nil
}
