package model

import (
	"bytes"
	"crypto/sha256"
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
//
// The file is read by its header and then by the spans of the tensors the
// states need, each shape checked against the model before any tensor is
// read: a file that does not fit the model costs only its header, and a
// large (even sparse) one is never read whole.
func LoadStates(path string, states []ParamState, withOptim bool) (map[string]string, error) {
	f, err := OpenSafetensors(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
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
			got, ok := f.Shape(l.name)
			if !ok {
				return nil, fmt.Errorf("%s: tensor %q missing", path, l.name)
			}
			if !sameShape(got, st.T.Shape) {
				return nil, fmt.Errorf("%s: tensor %q has shape %v, model wants %v", path, l.name, got, st.T.Shape)
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

// FillStates is LoadStates on tensors already read from the file named
// name.
func FillStates(name string, ts []STensor, states []ParamState, withOptim bool) error {
	byName := make(map[string]STensor, len(ts))
	for _, t := range ts {
		byName[t.Name] = t
	}
	load := func(tn string, shape []int, dst []float32) error {
		t, ok := byName[tn]
		if !ok {
			return fmt.Errorf("%s: tensor %q missing", name, tn)
		}
		if !sameShape(t.Shape, shape) {
			return fmt.Errorf("%s: tensor %q has shape %v, model wants %v", name, tn, t.Shape, shape)
		}
		copy(dst, t.Data)
		return nil
	}
	for _, st := range states {
		if err := load(st.T.Name, st.T.Shape, st.T.W); err != nil {
			return err
		}
		if withOptim {
			if err := load("optim.m."+st.T.Name, st.T.Shape, st.M); err != nil {
				return err
			}
			if err := load("optim.v."+st.T.Name, st.T.Shape, st.V); err != nil {
				return err
			}
		}
	}
	return nil
}

// MaxShardHeader bounds a checkpoint file's header (names, shapes, offsets
// and the configs in the metadata) on top of its tensor bytes, when its
// size is checked before it is read (ShardLimit).
const MaxShardHeader = 16 << 20

// ShardLimit is the most a checkpoint file of states (with optimizer
// moments) may weigh: its tensor bytes, the header length field and
// MaxShardHeader.
func ShardLimit(states []ParamState) int64 { return 8 + MaxShardHeader + StatesBytes(states, true) }

// StatesBytes is the tensor data a checkpoint of states holds (weights,
// and both moments when withOptim), in bytes: with a header bound, the
// most a shard file of them may weigh.
func StatesBytes(states []ParamState, withOptim bool) int64 {
	var n int64
	for _, st := range states {
		n += 4 * int64(len(st.T.W))
	}
	if withOptim {
		n *= 3
	}
	return n
}

// Digest identifies a checkpoint file by content: its size and SHA-256.
type Digest struct {
	Size   int64
	SHA256 [sha256.Size]byte
}

// DigestOf is the digest of b.
func DigestOf(b []byte) Digest { return Digest{Size: int64(len(b)), SHA256: sha256.Sum256(b)} }

// Hex is the SHA-256 in hex.
func (d Digest) Hex() string { return hex.EncodeToString(d.SHA256[:]) }

// ParseDigest builds a digest from a size and a SHA-256 in bytes.
func ParseDigest(size int64, sum []byte) (Digest, error) {
	var d Digest
	if size < 0 {
		return d, fmt.Errorf("negative size %d", size)
	}
	if len(sum) != sha256.Size {
		return d, fmt.Errorf("SHA-256 of %d bytes, want %d", len(sum), sha256.Size)
	}
	d.Size = size
	copy(d.SHA256[:], sum)
	return d, nil
}

// ErrCorrupt marks a checkpoint file whose size or SHA-256 is not the one
// its listing records, or which does not parse: a bad checkpoint, as
// opposed to one that cannot be read at the moment.
var ErrCorrupt = errors.New("corrupt checkpoint")

// ReadVerified reads the file r names (name is for errors) and returns its
// bytes once they match want. The size is checked before anything is
// allocated: against limit (what the caller can have in memory for this
// file) and against the file's own size when r is an *os.File; the bytes
// are hashed as they are read, and never more than want.Size+1 are read.
func ReadVerified(r io.Reader, name string, want Digest, limit int64) ([]byte, error) {
	if want.Size > limit {
		return nil, fmt.Errorf("%w: %s: listed size %d exceeds the %d-byte bound of this shard", ErrCorrupt, name, want.Size, limit)
	}
	if f, ok := r.(*os.File); ok {
		fi, err := f.Stat()
		if err != nil {
			return nil, err
		}
		if fi.Size() != want.Size {
			return nil, fmt.Errorf("%w: %s is %d bytes, its listing says %d", ErrCorrupt, name, fi.Size(), want.Size)
		}
	}
	h := sha256.New()
	buf := bytes.NewBuffer(make([]byte, 0, want.Size))
	n, err := io.Copy(io.MultiWriter(buf, h), io.LimitReader(r, want.Size+1))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if n != want.Size {
		return nil, fmt.Errorf("%w: %s: read %d bytes, its listing says %d", ErrCorrupt, name, n, want.Size)
	}
	if got := h.Sum(nil); !bytes.Equal(got, want.SHA256[:]) {
		return nil, fmt.Errorf("%w: %s: SHA-256 %x, its listing says %x", ErrCorrupt, name, got, want.SHA256)
	}
	return buf.Bytes(), nil
}

// ParseVerified parses verified bytes of a checkpoint file; a parse
// failure is ErrCorrupt.
func ParseVerified(b []byte, name string) ([]STensor, map[string]string, error) {
	ts, meta, err := ReadSafetensors(b)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %s: %w", ErrCorrupt, name, err)
	}
	return ts, meta, nil
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

// SumsFile, in a checkpoint directory the trainer saved, lists every
// checkpoint file with its SHA-256 in sha256sum's format (`sha256sum -c
// SHA256SUMS` checks them); LoadTrainer and LoadPipeline verify the file
// they read against it.
const SumsFile = "SHA256SUMS"

// maxSumsBytes bounds a SHA256SUMS file.
const maxSumsBytes = 1 << 20

// Save writes dir/model.safetensors (whole model) and one
// dir/shard-<i>.safetensors per shard, each with optimizer state and the
// metadata (configs, step, plus extra such as the data position), then
// dir/SHA256SUMS.
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
	names := []string{WholeModelFile}
	for i := range t.Opts {
		names = append(names, ShardFile(i))
	}
	return WriteSums(dir, names)
}

// WriteSums hashes the named files of dir into dir/SHA256SUMS.
func WriteSums(dir string, names []string) error {
	var b bytes.Buffer
	for _, n := range names {
		sum, err := hashFile(filepath.Join(dir, n))
		if err != nil {
			return err
		}
		fmt.Fprintf(&b, "%x  %s\n", sum, n)
	}
	tmp := filepath.Join(dir, SumsFile+".tmp")
	if err := os.WriteFile(tmp, b.Bytes(), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(dir, SumsFile))
}

// hashFile streams a file through SHA-256.
func hashFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return h.Sum(nil), nil
}

// VerifyFile checks a checkpoint file the trainer saved against the
// SHA256SUMS beside it, hashing it as a stream: ErrCorrupt when the
// SHA-256 differs, an error naming the fix when the file is not listed
// or there is no SHA256SUMS.
func VerifyFile(path string) error {
	dir, name := filepath.Split(path)
	sums := filepath.Join(dir, SumsFile)
	f, err := os.Open(sums)
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("%s: no %s beside it to verify it against (a checkpoint saved before digests were written: check it and run `sha256sum *.safetensors > %s` in its directory to load it)", path, SumsFile, SumsFile)
	}
	if err != nil {
		return err
	}
	b, err := io.ReadAll(io.LimitReader(f, maxSumsBytes+1))
	f.Close()
	if err != nil {
		return fmt.Errorf("%s: %w", sums, err)
	}
	if len(b) > maxSumsBytes {
		return fmt.Errorf("%w: %s is over %d bytes", ErrCorrupt, sums, maxSumsBytes)
	}
	var want string
	for _, line := range strings.Split(string(b), "\n") {
		if sum, file, ok := strings.Cut(line, "  "); ok && strings.TrimPrefix(file, "*") == name {
			want = sum
		}
	}
	if want == "" {
		return fmt.Errorf("%s: not listed in %s", path, sums)
	}
	got, err := hashFile(path)
	if err != nil {
		return err
	}
	if hex.EncodeToString(got) != strings.ToLower(want) {
		return fmt.Errorf("%w: %s: SHA-256 %x, %s says %s", ErrCorrupt, path, got, sums, want)
	}
	return nil
}

// LoadTrainer restores a trainer from a checkpoint file (whole-model or,
// for a one-shard model, a shard file) so that training resumes exactly,
// after VerifyFile. It
// returns the metadata for the caller's own keys (data position).
func LoadTrainer(path string) (*Trainer, map[string]string, error) {
	if err := VerifyFile(path); err != nil {
		return nil, nil, err
	}
	return loadTrainer(path, DefaultLimits)
}

// loadTrainer is LoadTrainer, verification aside, under lim.
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

// LoadPipeline loads a checkpoint's weights (no optimizer state) into a
// model split into stages shards, for evaluation, after VerifyFile.
func LoadPipeline(path string, stages int, layout Layout) (*Pipeline, map[string]string, error) {
	if err := VerifyFile(path); err != nil {
		return nil, nil, err
	}
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
