package train

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"stagecoach/model"
)

func tinyCorpus(t *testing.T) string {
	dir := t.TempDir()
	for i := 0; i < 30; i++ {
		body := strings.Repeat("func f() { return x + y }\n", 20+i)
		os.WriteFile(filepath.Join(dir, "f"+string(rune('a'+i%26))+strings.Repeat("z", i/26)+".go"), []byte(body), 0o644)
	}
	return dir
}

func tinyOptions(corpus, out string, steps int) Options {
	return Options{
		Train: model.TrainConfig{
			Model:        model.Config{Layers: 2, Dim: 16, Heads: 2, Ctx: 16, Seed: 4},
			Microbatches: 2, MicrobatchSize: 2,
			Optim: model.OptimConfig{Kind: "adamw"},
		},
		Steps: steps, CorpusDir: corpus, OutDir: out, EvalWindows: 8, EvalEvery: 2,
	}
}

// TestResumeThroughCheckpoint: a run of 4 steps and a run of 2 steps
// resumed from its checkpoint for 2 more end with identical weights and
// optimizer state, because the checkpoint carries the data position.
func TestResumeThroughCheckpoint(t *testing.T) {
	corpus := tinyCorpus(t)
	a := filepath.Join(t.TempDir(), "a")
	b := filepath.Join(t.TempDir(), "b")
	s, err := Prepare(tinyOptions(corpus, a, 4))
	if err != nil {
		t.Fatal(err)
	}
	res, err := s.Run(nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(res.Plot); err != nil {
		t.Fatal(err)
	}
	ob := tinyOptions(corpus, b, 4)
	ob.StopAt = 2 // an interrupted run: same schedule, stops early
	s, _ = Prepare(ob)
	if _, err := s.Run(nil); err != nil {
		t.Fatal(err)
	}
	o := tinyOptions("", b, 4)
	o.Resume = b
	s, err = Prepare(o)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Run(nil); err != nil {
		t.Fatal(err)
	}
	ta, _, err := model.ReadSafetensorsFile(filepath.Join(a, model.WholeModelFile))
	if err != nil {
		t.Fatal(err)
	}
	tb, _, _ := model.ReadSafetensorsFile(filepath.Join(b, model.WholeModelFile))
	for i := range ta {
		for j := range ta[i].Data {
			if ta[i].Data[j] != tb[i].Data[j] {
				t.Fatalf("%s[%d] differs after resume", ta[i].Name, j)
			}
		}
	}
	if len(s.History) != 4+2 { // 4 train points + val at steps 2 and 4
		t.Fatalf("history has %d points", len(s.History))
	}
}

func TestPrepareErrors(t *testing.T) {
	if _, err := Prepare(tinyOptions(t.TempDir(), t.TempDir(), 1)); err == nil || !strings.Contains(err.Error(), "no text files") {
		t.Fatalf("empty corpus: %v", err)
	}
	o := tinyOptions(tinyCorpus(t), t.TempDir(), 1)
	o.Resume = filepath.Join(t.TempDir(), "nothing")
	if _, err := Prepare(o); err == nil {
		t.Fatal("missing checkpoint accepted")
	}
}
