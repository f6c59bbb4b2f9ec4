package coordinator

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"stagecoach/model"
	"stagecoach/sim"
	"stagecoach/worker"
)

// TestVacantSourceSkipsDamagedCopies writes stage 1's shard into the
// checkpoints of steps 2 and 4 under a checkpoint root, damages the newer
// one, and checks that the state carried forward for the vacant stage is
// the older checkpoint's, read whole and verified; with both damaged there
// is none, and a listing outside the root is never read.
func TestVacantSourceSkipsDamagedCopies(t *testing.T) {
	root := t.TempDir()
	mc := model.Config{Layers: 2, Dim: 16, Heads: 2, Ctx: 16, Seed: 7}.WithDefaults()
	r := testRun(t)
	var logs strings.Builder
	r.cfg = &Config{Simulator: sim.Simulator{}, CheckpointDir: root, Train: model.TrainConfig{Model: mc},
		Logf: func(f string, a ...any) { logs.WriteString(f + "\n") }}
	specs, err := model.Split(mc.Layers, 2, model.HeadFirst)
	if err != nil {
		t.Fatal(err)
	}
	write := func(step int64, scale float32) CheckpointManifest {
		sh, err := model.NewShard(mc, specs[1])
		if err != nil {
			t.Fatal(err)
		}
		opt, err := model.NewOptimizer(model.OptimConfig{Kind: "adamw"}.WithDefaults(), sh.Params())
		if err != nil {
			t.Fatal(err)
		}
		for _, st := range opt.States {
			for i := range st.T.W {
				st.T.W[i] *= scale
			}
		}
		var b bytes.Buffer
		meta := map[string]string{model.MetaFormat: model.FormatV1, model.MetaStep: strconv.FormatInt(step, 10)}
		if err := model.WriteStates(&b, opt.States, meta); err != nil {
			t.Fatal(err)
		}
		dir := worker.StepDir(root, step)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(dir, model.ShardFile(1))
		if err := os.WriteFile(path, b.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
		d := model.DigestOf(b.Bytes())
		return CheckpointManifest{Step: step, Base: root, Shards: []ShardDigest{{Stage: 1, File: path, Size: d.Size, SHA256: d.Hex()}}}
	}
	older, newer := write(2, 2), write(4, 3)
	listed := []CheckpointManifest{newer, older} // newest first
	ts, meta, err := r.vacantSource(listed, 1)
	if err != nil || meta[metaRestoredFrom] != "4" {
		t.Fatalf("intact: from step %q, %v; want the newest (4)", meta[metaRestoredFrom], err)
	}
	first := ts[0].Data[0]

	// One flipped bit in the newer copy: the older one is carried.
	path := newer.Shards[0].File
	b, _ := os.ReadFile(path)
	b[len(b)-2] ^= 0x20
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	ts, meta, err = r.vacantSource(listed, 1)
	if err != nil || meta[metaRestoredFrom] != "2" {
		t.Fatalf("newest damaged: from step %q, %v; want the older (2)", meta[metaRestoredFrom], err)
	}
	if got := ts[0].Data[0]; got*3 != first*2 {
		t.Errorf("carried value %v, want the older checkpoint's %v", got, first*2/3)
	}
	if !strings.Contains(logs.String(), "skipping listed") {
		t.Errorf("the damaged copy was skipped silently:\n%s", logs.String())
	}

	// Both damaged: no state to carry, an error rather than the seed.
	p2 := older.Shards[0].File
	if err := os.WriteFile(p2, []byte("junk"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, err := r.vacantSource(listed, 1); err == nil {
		t.Fatal("both copies damaged: no error")
	}

	// A listing whose base lies outside the root is never read.
	out := older
	out.Base = t.TempDir()
	if _, _, err := r.readListedShard(&out, 1); err == nil || !strings.Contains(err.Error(), "outside the root") {
		t.Errorf("listing outside the root: %v", err)
	}
}
