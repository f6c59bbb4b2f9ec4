package model

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// NumParams is the count the model really allocates.
func TestNumParamsMatchesTheModel(t *testing.T) {
	for _, c := range []Config{
		{Layers: 2, Dim: 16, Heads: 2, Ctx: 8},
		{Layers: 0, Dim: 8, Heads: 1, Ctx: 3, Vocab: 7, Hidden: 5},
		{Layers: 3, Dim: 12, Heads: 3, Ctx: 5, Vocab: 300},
	} {
		c = c.WithDefaults()
		p, err := NewPipeline(c, 1, HeadFirst)
		if err != nil {
			t.Fatal(err)
		}
		var n int64
		for _, t := range p.Params() {
			n += int64(len(t.W))
		}
		if got := NumParams(c); got != n {
			t.Errorf("%+v: NumParams %d, the model has %d", c, got, n)
		}
	}
}

func TestCheckLimits(t *testing.T) {
	def := smallTrainConfig(2, "adamw").Model.WithDefaults()
	if err := def.CheckLimits(Limits{}, 8); err != nil {
		t.Fatalf("small model refused: %v", err)
	}
	for name, tc := range map[string]struct {
		c     Config
		batch int
		lim   Limits
		want  string
	}{
		"dim 65536":       {Config{Layers: 2, Dim: 65536, Heads: 2, Ctx: 8}, 1, Limits{}, "parameters"},
		"dim past cap":    {Config{Layers: 2, Dim: 1 << 20, Heads: 2, Ctx: 8}, 1, Limits{}, "dim 1048576 exceeds the limit"},
		"huge vocab":      {Config{Layers: 1, Dim: 16, Heads: 2, Ctx: 8, Vocab: 1 << 30}, 1, Limits{}, "vocab"},
		"many layers":     {Config{Layers: 1 << 20, Dim: 16, Heads: 2, Ctx: 8}, 1, Limits{}, "layers"},
		"huge batch":      {Config{Layers: 2, Dim: 16, Heads: 2, Ctx: 8}, 1 << 30, Limits{}, "activation bytes"},
		"long context":    {Config{Layers: 2, Dim: 64, Heads: 8, Ctx: 1 << 16}, 1, Limits{}, "activation bytes"},
		"tighter params":  {Config{Layers: 2, Dim: 16, Heads: 2, Ctx: 8}, 1, Limits{MaxParams: 1000}, "exceed the limit of 1000"},
		"negative limits": {Config{Layers: 2, Dim: 16, Heads: 2, Ctx: 8}, 1, Limits{MaxParams: -1}, "negative"},
	} {
		err := tc.c.WithDefaults().CheckLimits(tc.lim, tc.batch)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error mentioning %q", name, err, tc.want)
		}
	}
}

// heapGrowth runs f and returns how many bytes it allocated in all.
func heapGrowth(f func()) uint64 {
	var a, b runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&a)
	f()
	runtime.ReadMemStats(&b)
	return b.TotalAlloc - a.TotalAlloc
}

// A checkpoint of a few hundred bytes whose metadata claims dim 65536
// (51.5 GB of model) is refused from its header, allocating next to
// nothing, by every reader that builds a model from metadata.
func TestHostileCheckpointMetadata(t *testing.T) {
	tc := smallTrainConfig(2, "adamw")
	tc.Model.Dim = 65536
	mc, _ := json.Marshal(tc.Model)
	tj, _ := json.Marshal(tc)
	path := filepath.Join(t.TempDir(), "hostile.safetensors")
	var buf bytes.Buffer
	if err := WriteSafetensors(&buf, nil, map[string]string{MetaFormat: FormatV1, MetaModelConfig: string(mc), MetaTrainConfig: string(tj), MetaStep: "1"}); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	// Its digest is in order: whoever wrote the file wrote the sums too.
	if err := WriteSums(filepath.Dir(path), []string{filepath.Base(path)}); err != nil {
		t.Fatal(err)
	}
	t.Logf("hostile checkpoint: %d bytes", buf.Len())
	var err1, err2 error
	grew := heapGrowth(func() {
		_, _, err1 = LoadTrainer(path)
		_, _, err2 = LoadPipeline(path, 1, HeadFirst)
	})
	for name, err := range map[string]error{"LoadTrainer": err1, "LoadPipeline": err2} {
		if err == nil || !strings.Contains(err.Error(), "parameters") || !strings.Contains(err.Error(), "dim 65536") {
			t.Errorf("%s: %v, want a refusal naming the parameter limit and dim 65536", name, err)
		}
	}
	if grew > 1<<20 {
		t.Errorf("refusing the checkpoint allocated %d bytes, want under 1 MiB", grew)
	}
}

// A 10 GB sparse file with a small header is opened and refused or read
// by its spans only, never read whole.
func TestSparseSafetensorsFile(t *testing.T) {
	const size = 10 << 30
	dir := t.TempDir()
	write := func(name, header string) string {
		t.Helper()
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, stFile(header, nil), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(path, size); err != nil {
			t.Skipf("no sparse files here: %v", err)
		}
		return path
	}
	// One 8 GB tensor covering most of the file.
	big := write("big.safetensors", `{"x":{"dtype":"F32","shape":[2147483648],"data_offsets":[0,8589934592]}}`)
	// One small tensor at the end of the file.
	small := write("small.safetensors", `{"__metadata__":{"k":"v"},"y":{"dtype":"F32","shape":[2],"data_offsets":[10737418100,10737418108]}}`)
	var errBig, errSmall error
	var ts []STensor
	var meta map[string]string
	grew := heapGrowth(func() {
		_, _, errBig = ReadSafetensorsFile(big)
		ts, meta, errSmall = ReadSafetensorsFile(small)
	})
	if errBig == nil || !strings.Contains(errBig.Error(), "exceed the") {
		t.Errorf("8 GB tensor: %v, want a refusal by the data limit", errBig)
	}
	if errSmall != nil || len(ts) != 1 || len(ts[0].Data) != 2 || meta["k"] != "v" {
		t.Errorf("small tensor of a sparse file: %v %v %v", ts, meta, errSmall)
	}
	// A model whose shapes do not match is refused from the header.
	st := []ParamState{{T: &Tensor{Name: "x", Shape: []int{4}, W: make([]float32, 4)}}}
	if _, err := LoadStates(big, st, false); err == nil || !strings.Contains(err.Error(), "model wants [4]") {
		t.Errorf("LoadStates of a mismatched tensor: %v", err)
	}
	if grew > 1<<20 {
		t.Errorf("reading the sparse files allocated %d bytes, want under 1 MiB", grew)
	}
	// The header must fit in the file.
	path := filepath.Join(dir, "short.safetensors")
	if err := os.WriteFile(path, stFile(`{}`, nil)[:9], 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenSafetensors(path); err == nil || !strings.Contains(err.Error(), "truncated") {
		t.Errorf("header longer than the file: %v", err)
	}
}

// FuzzLoadCheckpointMeta feeds arbitrary train and model configs to the
// checkpoint readers through a real file, under small limits so what is
// accepted is cheap to build: they must refuse cleanly or load a model
// within the limits, never panic.
func FuzzLoadCheckpointMeta(f *testing.F) {
	good, _ := json.Marshal(smallTrainConfig(2, "adamw"))
	goodModel, _ := json.Marshal(smallTrainConfig(2, "adamw").Model)
	f.Add(string(good), string(goodModel), "3")
	f.Add(`{"model":{"dim":65536,"layers":2,"heads":2,"ctx":8},"microbatches":1,"microbatch_size":1}`, `{"dim":65536}`, "1")
	f.Add(`{"model":{"dim":16,"layers":2,"heads":2,"ctx":8,"hidden":-1},"microbatches":1,"microbatch_size":1}`, `{}`, "-1")
	lim := Limits{MaxParams: 1 << 15, MaxActivationBytes: 1 << 22}
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, trainJSON, modelJSON, step string) {
		var buf bytes.Buffer
		if err := WriteSafetensors(&buf, nil, map[string]string{MetaFormat: FormatV1, MetaTrainConfig: trainJSON, MetaModelConfig: modelJSON, MetaStep: step}); err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(dir, "c.safetensors")
		if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
		tr, _, err := loadTrainer(path, lim)
		if err != nil {
			return
		}
		// A model without tensors loads only if it has no parameters at
		// all, which no valid config describes.
		t.Fatalf("a checkpoint without tensors loaded (%+v)", tr.Cfg.Model)
	})
}
