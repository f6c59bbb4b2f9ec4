package model_test

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"stagecoach/model"
)

// trainedDir trains a 3-layer model split into 3 shards for two steps and
// saves it into a new directory: model.safetensors, shard-0..2 and
// SHA256SUMS.
func trainedDir(t *testing.T) (string, *model.Trainer) {
	t.Helper()
	tr, err := model.NewTrainer(model.TrainConfig{Model: model.Config{Layers: 3, Dim: 8, Heads: 2, Ctx: 8, Seed: 5},
		Stages: 3, Microbatches: 2, MicrobatchSize: 2, Optim: model.OptimConfig{Kind: "adamw", TotalSteps: 4}})
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	sample := func(dst []int32) error {
		for i := range dst {
			dst[i] = int32((n*7 + i*3) % 256)
		}
		n++
		return nil
	}
	for range 2 {
		if _, err := tr.TrainStep(sample); err != nil {
			t.Fatal(err)
		}
	}
	dir := t.TempDir()
	if err := tr.Save(dir, map[string]string{model.MetaDataPosition: "pos-2"}); err != nil {
		t.Fatal(err)
	}
	return dir, tr
}

// sameStates compares weights (and moments when both have them) bit for
// bit.
func sameStates(t *testing.T, got, want []model.ParamState) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%d tensors, want %d", len(got), len(want))
	}
	for i := range want {
		g, w := got[i], want[i]
		if g.T.Name != w.T.Name {
			t.Fatalf("tensor %d is %s, want %s", i, g.T.Name, w.T.Name)
		}
		pairs := [][2][]float32{{g.T.W, w.T.W}}
		if g.M != nil && w.M != nil {
			pairs = append(pairs, [2][]float32{g.M, w.M}, [2][]float32{g.V, w.V})
		}
		for _, p := range pairs {
			for j := range p[1] {
				if math.Float32bits(p[0][j]) != math.Float32bits(p[1][j]) {
					t.Fatalf("%s[%d] differs: %v, want %v", w.T.Name, j, p[0][j], p[1][j])
				}
			}
		}
	}
}

// TestShardSetAndExport opens the shards of a trained model without its
// whole-model file, checks they give the trainer's state bit for bit,
// exports them into one file and checks that file gives the same.
func TestShardSetAndExport(t *testing.T) {
	dir, tr := trainedDir(t)
	if err := os.Remove(filepath.Join(dir, model.WholeModelFile)); err != nil {
		t.Fatal(err)
	}
	ck, err := model.OpenCheckpoint(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !ck.Sharded || len(ck.Files) != 3 || ck.Verified != model.SumsFile || ck.Step != 2 || !ck.Moments {
		t.Fatalf("opened %+v", ck)
	}
	for _, k := range []string{"stage", "shard"} {
		if _, ok := ck.Meta[k]; ok {
			t.Errorf("merged metadata keeps the per-shard key %q", k)
		}
	}
	if ck.Meta[model.MetaDataPosition] != "pos-2" {
		t.Errorf("data position %q", ck.Meta[model.MetaDataPosition])
	}
	got, err := ck.States(true)
	if err != nil {
		t.Fatal(err)
	}
	sameStates(t, got, tr.States())

	out := filepath.Join(t.TempDir(), "whole.safetensors")
	if err := ck.Export(out, true); err != nil {
		t.Fatal(err)
	}
	ex, err := model.OpenCheckpoint(out)
	if err != nil {
		t.Fatal(err)
	}
	if ex.Sharded || ex.Step != 2 || !ex.Moments || ex.Meta[model.MetaTrainConfig] != ck.Meta[model.MetaTrainConfig] {
		t.Fatalf("export opened as %+v", ex)
	}
	got, err = ex.States(true)
	if err != nil {
		t.Fatal(err)
	}
	sameStates(t, got, tr.States())
	// The export resumes training like the trainer's own file.
	back, _, err := model.LoadTrainer(out)
	if err != nil {
		t.Fatal(err)
	}
	sameStates(t, back.States(), tr.States())

	// Without moments: weights only, and asking for moments is refused.
	light := filepath.Join(filepath.Dir(out), "light.safetensors")
	if err := ck.Export(light, false); err != nil {
		t.Fatal(err)
	}
	lc, err := model.OpenCheckpoint(light)
	if err != nil {
		t.Fatal(err)
	}
	if lc.Moments {
		t.Fatal("export without --with-optimizer holds moments")
	}
	if _, err := lc.States(true); err == nil {
		t.Fatal("moments read from a file without them")
	}
	// Both exports are listed in the one SHA256SUMS.
	sums, _ := os.ReadFile(filepath.Join(filepath.Dir(out), model.SumsFile))
	if !strings.Contains(string(sums), "  whole.safetensors\n") || !strings.Contains(string(sums), "  light.safetensors\n") {
		t.Fatalf("SHA256SUMS:\n%s", sums)
	}
}

// TestShardSetVerification: a shard set is checked against SHA256SUMS,
// else the job's manifest.json, else reported unverified; a damaged file
// is refused naming it.
func TestShardSetVerification(t *testing.T) {
	dir, _ := trainedDir(t)
	os.Remove(filepath.Join(dir, model.WholeModelFile))
	shard1 := filepath.Join(dir, model.ShardFile(1))
	good, _ := os.ReadFile(shard1)
	bad := append([]byte(nil), good...)
	bad[len(bad)-3] ^= 1
	os.WriteFile(shard1, bad, 0o644)
	if _, err := model.OpenCheckpoint(dir); !errors.Is(err, model.ErrCorrupt) || !strings.Contains(err.Error(), shard1) {
		t.Fatalf("flipped bit against SHA256SUMS: %v", err)
	}
	os.WriteFile(shard1, good, 0o644)

	// The job's manifest instead.
	os.Remove(filepath.Join(dir, model.SumsFile))
	type shard struct {
		Stage  int    `json:"stage"`
		File   string `json:"file"`
		Size   int64  `json:"size"`
		SHA256 string `json:"sha256"`
	}
	var m struct {
		Step         int     `json:"step"`
		DataPosition string  `json:"data_position"`
		Shards       []shard `json:"shards"`
	}
	m.Step, m.DataPosition = 2, "pos-from-manifest"
	for i := range 3 {
		b, _ := os.ReadFile(filepath.Join(dir, model.ShardFile(i)))
		d := model.DigestOf(b)
		m.Shards = append(m.Shards, shard{i, "/elsewhere/step-00000002/" + model.ShardFile(i), d.Size, hex.EncodeToString(d.SHA256[:])})
	}
	mb, _ := json.Marshal(m)
	os.WriteFile(filepath.Join(dir, model.ManifestFile), mb, 0o644)
	ck, err := model.OpenCheckpoint(dir)
	if err != nil {
		t.Fatal(err)
	}
	if ck.Verified != model.ManifestFile || ck.Meta[model.MetaDataPosition] != "pos-2" {
		t.Fatalf("verified against %q, data position %q", ck.Verified, ck.Meta[model.MetaDataPosition])
	}
	os.WriteFile(shard1, bad, 0o644)
	if _, err := model.OpenCheckpoint(dir); !errors.Is(err, model.ErrCorrupt) || !strings.Contains(err.Error(), model.ManifestFile) {
		t.Fatalf("flipped bit against the manifest: %v", err)
	}
	os.WriteFile(shard1, good, 0o644)

	// Neither: opened, and said to be unverified.
	os.Remove(filepath.Join(dir, model.ManifestFile))
	if ck, err = model.OpenCheckpoint(dir); err != nil || ck.Verified != "" {
		t.Fatalf("unverified set: %v, verified %q", err, ck.Verified)
	}
}

// TestShardSetRefusals: missing, duplicated and foreign shards, and
// shards of different steps or models, are refused naming the file.
func TestShardSetRefusals(t *testing.T) {
	setup := func(t *testing.T) string {
		dir, _ := trainedDir(t)
		os.Remove(filepath.Join(dir, model.WholeModelFile))
		os.Remove(filepath.Join(dir, model.SumsFile))
		return dir
	}
	rewrite := func(t *testing.T, path string, edit func(ts []model.STensor, meta map[string]string) []model.STensor) {
		ts, meta, err := model.ReadSafetensorsFile(path)
		if err != nil {
			t.Fatal(err)
		}
		ts = edit(ts, meta)
		if err := model.WriteSafetensorsFile(path, ts, meta); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		name, want string
		break_     func(t *testing.T, dir string)
	}{
		{"missing shard", `no file holds tensor "blocks.1.norm1"`, func(t *testing.T, dir string) {
			os.Remove(filepath.Join(dir, model.ShardFile(1)))
		}},
		{"duplicate shard", "the files overlap", func(t *testing.T, dir string) {
			b, _ := os.ReadFile(filepath.Join(dir, model.ShardFile(1)))
			os.WriteFile(filepath.Join(dir, model.ShardFile(7)), b, 0o644)
		}},
		{"other step", "disagree on step", func(t *testing.T, dir string) {
			rewrite(t, filepath.Join(dir, model.ShardFile(2)), func(ts []model.STensor, meta map[string]string) []model.STensor {
				meta[model.MetaStep] = "3"
				return ts
			})
		}},
		{"other model", "hold different models: dim 8≠16", func(t *testing.T, dir string) {
			rewrite(t, filepath.Join(dir, model.ShardFile(2)), func(ts []model.STensor, meta map[string]string) []model.STensor {
				meta[model.MetaModelConfig] = strings.Replace(meta[model.MetaModelConfig], `"dim":8`, `"dim":16`, 1)
				return ts
			})
		}},
		{"foreign tensor", `tensor "blocks.9.w1" is not part of the model`, func(t *testing.T, dir string) {
			rewrite(t, filepath.Join(dir, model.ShardFile(0)), func(ts []model.STensor, meta map[string]string) []model.STensor {
				return append(ts, model.STensor{Name: "blocks.9.w1", Shape: []int{1}, Data: []float32{0}})
			})
		}},
		{"missing moment", `not its optimizer moment "optim.v.head"`, func(t *testing.T, dir string) {
			rewrite(t, filepath.Join(dir, model.ShardFile(0)), func(ts []model.STensor, meta map[string]string) []model.STensor {
				var out []model.STensor
				for _, x := range ts {
					if x.Name != "optim.v.head" {
						out = append(out, x)
					}
				}
				return out
			})
		}},
		{"badly named", "is not named shard-<number>", func(t *testing.T, dir string) {
			os.WriteFile(filepath.Join(dir, "shard-01.safetensors"), nil, 0o644)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := setup(t)
			tc.break_(t, dir)
			_, err := model.OpenCheckpoint(dir)
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), dir) {
				t.Fatalf("got %v, want an error naming %s and saying %q", err, dir, tc.want)
			}
		})
	}
	if _, err := model.OpenCheckpoint(t.TempDir()); err == nil || !strings.Contains(err.Error(), "not a checkpoint directory") {
		t.Fatalf("empty directory: %v", err)
	}
}

// coverCfg is the model the cover fuzz test splits.
var coverCfg = model.Config{Vocab: 8, Layers: 3, Dim: 4, Heads: 2, Ctx: 4}

// validCover splits coverCfg into files shards (with moments or not) the
// way a job writes them.
func validCover(files int, moments bool) []model.FileTensors {
	specs, _ := model.Split(coverCfg.Layers, files, model.HeadLast)
	shapes := map[string][]int{}
	for _, e := range model.ModelShapes(coverCfg) {
		shapes[e.Name] = e.Shape
	}
	var out []model.FileTensors
	for i, sp := range specs {
		f := model.FileTensors{File: fmt.Sprintf("shard-%d", i)}
		for _, n := range model.SpecTensorNames(coverCfg, sp) {
			f.Tensors = append(f.Tensors, model.TensorEntry{Name: n, Shape: shapes[n]})
			if moments {
				f.Tensors = append(f.Tensors, model.TensorEntry{Name: "optim.m." + n, Shape: shapes[n]}, model.TensorEntry{Name: "optim.v." + n, Shape: shapes[n]})
			}
		}
		out = append(out, f)
	}
	return out
}

// coverOracle decides whether files hold coverCfg exactly once by
// counting: every name once, the right shape, and moments all or none,
// each beside its parameter.
func coverOracle(files []model.FileTensors) bool {
	shapes := map[string][]int{}
	for _, e := range model.ModelShapes(coverCfg) {
		shapes[e.Name] = e.Shape
	}
	count := map[string]int{}
	where := map[string]int{}
	for i, f := range files {
		for _, t := range f.Tensors {
			count[t.Name]++
			where[t.Name] = i
			base := t.Name
			for _, p := range []string{"optim.m.", "optim.v."} {
				if strings.HasPrefix(base, p) {
					base = base[len(p):]
					break
				}
			}
			want, ok := shapes[base]
			if !ok || fmt.Sprint(want) != fmt.Sprint(t.Shape) {
				return false
			}
		}
	}
	nm := 0
	for n, c := range count {
		if c != 1 {
			return false
		}
		if strings.HasPrefix(n, "optim.") {
			nm++
		}
	}
	for n := range shapes {
		if count[n] != 1 {
			return false
		}
	}
	if nm == 0 {
		return true
	}
	if nm != 2*len(shapes) {
		return false
	}
	for n := range shapes {
		if where["optim.m."+n] != where[n] || where["optim.v."+n] != where[n] {
			return false
		}
	}
	return true
}

// FuzzCheckCover forges shard sets from a valid split (dropping,
// duplicating, moving, renaming and reshaping tensors) and checks that
// CheckCover accepts exactly the sets that still hold the model once.
func FuzzCheckCover(f *testing.F) {
	f.Add(uint8(3), true, []byte{})
	f.Add(uint8(2), true, []byte{0, 5})
	f.Add(uint8(3), false, []byte{1, 3, 2})
	f.Add(uint8(1), true, []byte{4, 7, 1, 4, 7, 0})
	f.Add(uint8(3), true, []byte{5, 2, 0})
	f.Add(uint8(2), false, []byte{6, 0, 0})
	f.Fuzz(func(t *testing.T, nfiles uint8, moments bool, ops []byte) {
		files := validCover(int(nfiles%3)+1, moments)
		if err := func() error { _, _, err := model.CheckCover(coverCfg, files); return err }(); err != nil {
			t.Fatalf("valid split refused: %v", err)
		}
		for len(ops) >= 3 {
			op, a, b := ops[0], int(ops[1]), int(ops[2])
			ops = ops[3:]
			fi := a % len(files)
			ts := files[fi].Tensors
			if len(ts) == 0 {
				continue
			}
			ti := b % len(ts)
			to := b % len(files)
			switch op % 7 {
			case 0: // drop
				files[fi].Tensors = append(ts[:ti:ti], ts[ti+1:]...)
			case 1: // duplicate into a file
				files[to].Tensors = append(files[to].Tensors, ts[ti])
			case 2: // move to a file
				e := ts[ti]
				files[fi].Tensors = append(ts[:ti:ti], ts[ti+1:]...)
				files[to].Tensors = append(files[to].Tensors, e)
			case 3: // forge a name
				ts[ti].Name = fmt.Sprintf("blocks.%d.w1", b)
			case 4: // reshape
				ts[ti].Shape = append(append([]int(nil), ts[ti].Shape...), 1+b%2)
			case 5: // rename to a moment of itself
				ts[ti].Name = "optim.m." + ts[ti].Name
			case 6: // an empty file
				files = append(files, model.FileTensors{File: "extra"})
			}
		}
		owner, _, err := model.CheckCover(coverCfg, files)
		if want := coverOracle(files); (err == nil) != want {
			t.Fatalf("CheckCover says %v, the oracle %v, on %+v", err, want, files)
		}
		if err == nil {
			for name, i := range owner {
				found := false
				for _, e := range files[i].Tensors {
					found = found || e.Name == name
				}
				if !found {
					t.Fatalf("owner of %s is %s, which does not hold it", name, files[i].File)
				}
			}
		}
	})
}

// TestSpecNamesAndShapesMatchShards: the names and shapes the cut and
// the cover check use are those of the shards the model builds, for
// every split and both layouts.
func TestSpecNamesAndShapesMatchShards(t *testing.T) {
	cfg := model.Config{Layers: 5, Dim: 8, Heads: 2, Ctx: 6, Hidden: 12, Vocab: 20}
	shapes := map[string][]int{}
	for _, e := range model.ModelShapes(cfg) {
		shapes[e.Name] = e.Shape
	}
	if want := model.TensorNames(cfg); len(want) != len(shapes) {
		t.Fatalf("ModelShapes lists %d tensors, TensorNames %d", len(shapes), len(want))
	}
	for stages := 1; stages <= cfg.Layers; stages++ {
		for _, layout := range []model.Layout{model.HeadFirst, model.HeadLast} {
			specs, err := model.Split(cfg.Layers, stages, layout)
			if err != nil {
				t.Fatal(err)
			}
			for _, sp := range specs {
				sh, err := model.NewShard(cfg, sp)
				if err != nil {
					t.Fatal(err)
				}
				names := model.SpecTensorNames(cfg, sp)
				if len(names) != len(sh.Params()) {
					t.Fatalf("%+v: %d names, the shard has %d tensors", sp, len(names), len(sh.Params()))
				}
				for i, p := range sh.Params() {
					if names[i] != p.Name || fmt.Sprint(shapes[p.Name]) != fmt.Sprint(p.Shape) {
						t.Fatalf("%+v: tensor %d is %s %v, the cut says %s %v", sp, i, p.Name, p.Shape, names[i], shapes[names[i]])
					}
				}
			}
		}
	}
}
