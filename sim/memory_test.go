package sim

import (
	"bytes"
	"encoding/json"
	"image/png"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"stagecoach/model"
	"stagecoach/scheduler"
)

// tinyModel is small enough to count by hand: a block has 2*8 + 4*64 +
// 2*8*32 = 784 parameters and keeps 8*8 + 3*32 + 2 + 2*4 = 170 floats per
// token (the embedding's stage one more, its token id); the embeddings
// have (16+4)*8 = 160 parameters, the head 8 + 8*16 = 136. A stage's
// workspace is (6*8 + 32) floats per token of a microbatch plus a 4x4
// attention matrix, and on the head stage (2*8 + 1 + 16) more per token.
var tinyModel = ModelMemory{Vocab: 16, Dim: 8, Heads: 2, Ctx: 4, Hidden: 32, Optimizer: "adamw"}

func tinyCluster() *Cluster {
	c := Homogeneous()
	m := tinyModel
	c.Model = &m
	return c
}

func TestStageMemoriesByHand(t *testing.T) {
	p, err := scheduler.Generate("gpipe", scheduler.Spec{Stages: 2, Microbatches: 2, Layers: 4})
	if err != nil {
		t.Fatal(err)
	}
	c := tinyCluster()
	got, err := StageMemories(p, c)
	if err != nil {
		t.Fatal(err)
	}
	want := []scheduler.StageMemory{
		// (2*784 + 160) parameters x 4 bytes x (weights, gradients,
		// contribution buffers, 2 moments);
		// microbatches of one sample, 4 tokens.
		// The Go model keeps nothing for a deferred weight gradient.
		{Static: 1728 * 20, Activations: 4 * 4 * (2*170 + 1), Input: 4 * 4, Workspace: 4 * (4*80 + 16)},
		{Static: 1704 * 20, Activations: 4 * 4 * 2 * 170, Input: 4 * 4 * 8, Loss: 4 * 4 * 2 * 16, Workspace: 4 * (4*80 + 16 + 4*33)},
	}
	if len(got) != 2 || got[0] != want[0] || got[1] != want[1] {
		t.Fatalf("got %+v\nwant %+v", got, want)
	}
	// A backend that splits its backward keeps 8*8 + 2*32 floats per
	// token and layer between I and W.
	c.Model.SplitBackward = true
	split, err := StageMemories(p, c)
	if err != nil {
		t.Fatal(err)
	}
	for s := range split {
		want[s].WeightGrad = 4 * 4 * 2 * (8*8 + 2*32)
		if split[s] != want[s] {
			t.Errorf("split_backward: stage %d %+v, want %+v", s, split[s], want[s])
		}
	}
	c.Model.SplitBackward = false
	// The stages add up to the model's own totals.
	cfg := model.Config{Vocab: 16, Layers: 4, Dim: 8, Heads: 2, Ctx: 4, Hidden: 32}
	if s := got[0].Static + got[1].Static; s != 20*float64(model.NumParams(cfg)) {
		t.Errorf("static %v, want 20 x %d parameters", s, model.NumParams(cfg))
	}
	if a := got[0].Activations + got[1].Activations + got[1].Loss; a != model.ActivationBytes(cfg, 1) {
		t.Errorf("activations %v, model.ActivationBytes %v", a, model.ActivationBytes(cfg, 1))
	}
	// SGD keeps no optimizer state; a calibration's per-stage gradient
	// bytes and measured activations replace the shape's.
	c.Model.Optimizer = "sgd"
	c.Compute.StageGradientBytes = []float64{400, 800}
	c.Model.StageActivationBytesPerSample = []float64{1000, 2000}
	got, err = StageMemories(p, c)
	if err != nil {
		t.Fatal(err)
	}
	if got[0].Static != 1200 || got[1].Static != 2400 || got[0].Activations != 1000 || got[1].Activations != 2000 {
		t.Errorf("sgd, calibrated: %+v", got)
	}
	c.Model.StageActivationBytesPerSample = []float64{1}
	if _, err := StageMemories(p, c); err == nil || !strings.Contains(err.Error(), "stage_activation_bytes_per_sample has 1 entries, the plan has 2 stages") {
		t.Errorf("wrong length: %v", err)
	}
}

// GPipe with p=2, m=3 microbatches of 2 samples on the unit cluster (a
// stage of 2 layers: forward 4 s): worker 0 reaches its peak, static plus
// three microbatches, when its last forward starts at 8 s; worker 1 when
// its last loss runs, at 16 s, with the logits on top.
func TestRunCountsMemoryOverTime(t *testing.T) {
	p, err := scheduler.Generate("gpipe", scheduler.Spec{Stages: 2, Microbatches: 3, Layers: 4, Samples: 2})
	if err != nil {
		t.Fatal(err)
	}
	r, err := Run(p, tinyCluster(), Options{MemoryTimeline: true})
	if err != nil {
		t.Fatal(err)
	}
	act0, act1 := 4.0*4*(2*170+1), 4.0*4*2*170
	ws0, ws1 := 4.0*(8*80+16), 4.0*(8*80+16+8*33) // microbatches of 8 tokens
	for _, want := range []WorkerStats{
		{Worker: 0, PeakBytes: 1728*20 + ws0 + 3*2*act0, PeakAtS: 8, StaticBytes: 1728*20 + ws0},
		{Worker: 1, PeakBytes: 1704*20 + ws1 + 3*2*act1 + 2*4*4*2*16, PeakAtS: 16, StaticBytes: 1704*20 + ws1},
	} {
		g := r.PerWorker[want.Worker]
		if g.PeakBytes != want.PeakBytes || g.PeakAtS != want.PeakAtS || g.StaticBytes != want.StaticBytes || g.CapacityBytes != 0 {
			t.Errorf("worker %d: peak %v at %v s, static %v, capacity %v; want %v at %v s, static %v, unbounded",
				want.Worker, g.PeakBytes, g.PeakAtS, g.StaticBytes, g.CapacityBytes, want.PeakBytes, want.PeakAtS, want.StaticBytes)
		}
		s := r.Memory[want.Worker]
		top := 0.0
		for _, b := range s.Bytes {
			top = max(top, b)
		}
		if s.T[0] != 0 || s.Bytes[0] != want.StaticBytes || top != want.PeakBytes || s.Bytes[len(s.Bytes)-1] != want.StaticBytes {
			t.Errorf("worker %d timeline starts (%v, %v), tops at %v, ends at %v", want.Worker, s.T[0], s.Bytes[0], top, s.Bytes[len(s.Bytes)-1])
		}
	}
	if r.PeakBytes != r.PerWorker[1].PeakBytes || r.Infeasible != "" {
		t.Errorf("result peak %v, infeasible %q", r.PeakBytes, r.Infeasible)
	}
	if r2, _ := Run(p, tinyCluster(), Options{}); r2.Memory != nil || r2.PerWorker[0].PeakBytes != r.PerWorker[0].PeakBytes {
		t.Errorf("without MemoryTimeline: %d series, peak %v", len(r2.Memory), r2.PerWorker[0].PeakBytes)
	}
}

const memoryClusterYAML = `name: small-devices
compute: {layer_forward_s: 1}
model: {vocab: 16, dim: 8, heads: 2, ctx: 4, hidden: 32, optimizer: adamw}
nodes:
  - {name: a, memory_gib: 0.000058}
  - {name: b}
`

// A cluster whose node a has 0.000058 GiB (60.8 KiB): GPipe's worker 0
// needs 68.3 KiB there, 1F1B's 57.6 KiB. GPipe is infeasible with the
// worker, the time and both sizes named; 1F1B fits; the table keeps both
// rows (the peak_memory column is the largest worker's, 69.8 KiB on
// worker 1), and the JSON carries the per-worker figures.
func TestMemoryCapacityMakesGPipeInfeasible(t *testing.T) {
	c, err := ParseCluster([]byte(memoryClusterYAML))
	if err != nil {
		t.Fatal(err)
	}
	var rs []*Result
	for _, name := range []string{"gpipe", "1f1b"} {
		p, err := scheduler.Generate(name, scheduler.Spec{Stages: 2, Microbatches: 3, Layers: 4, Samples: 2, Nodes: []string{"a", "b"}})
		if err != nil {
			t.Fatal(err)
		}
		r, err := Run(p, c, Options{})
		if err != nil {
			t.Fatal(err)
		}
		rs = append(rs, r)
	}
	if want := "worker 0 needs 68.3 KiB at t=8 s, node a has 60.8 KiB"; rs[0].Infeasible != want {
		t.Errorf("gpipe: infeasible %q, want %q", rs[0].Infeasible, want)
	}
	static0 := 1728*20 + 4.0*(8*80+16) // parameters and state, workspace
	if rs[1].Infeasible != "" || rs[1].PerWorker[0].PeakBytes != static0+2*2*4*4*(2*170+1) {
		t.Errorf("1f1b: infeasible %q, worker 0 peak %v", rs[1].Infeasible, rs[1].PerWorker[0].PeakBytes)
	}
	var buf bytes.Buffer
	if err := WriteTable(&buf, rs); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	if !regexp.MustCompile(`(?m)^gpipe\s+2\s+2\s+4\s+3\s+-\s+-\s+-\s+-\s+-\s+-\s+69\.8 KiB\s+-$`).MatchString(out) {
		t.Errorf("gpipe row should dash all but its peak memory:\n%s", out)
	}
	if !regexp.MustCompile(`(?m)^1f1b\s+2\s+2\s+4\s+3\s+\d+\.\d{4}\s.*\s57\.6 KiB\s`).MatchString(out) {
		t.Errorf("1f1b row missing:\n%s", out)
	}
	if !strings.Contains(out, "\ngpipe: infeasible: worker 0 needs 68.3 KiB at t=8 s, node a has 60.8 KiB\n") {
		t.Errorf("reason missing under the table:\n%s", out)
	}
	js, err := json.Marshal(rs)
	if err != nil {
		t.Fatal(err)
	}
	var rows []struct {
		Infeasible string  `json:"infeasible"`
		PeakBytes  float64 `json:"peak_bytes"`
		PerWorker  []struct {
			PeakBytes     float64  `json:"peak_bytes"`
			PeakAtS       float64  `json:"peak_at_s"`
			StaticBytes   float64  `json:"static_bytes"`
			CapacityBytes *float64 `json:"capacity_bytes"`
		} `json:"per_worker"`
	}
	if err := json.Unmarshal(js, &rows); err != nil {
		t.Fatal(err)
	}
	w0, w1 := rows[0].PerWorker[0], rows[0].PerWorker[1]
	if rows[0].PeakBytes != rs[0].PeakBytes || w0.PeakBytes != static0+3*2*4*4*(2*170+1) || w0.PeakAtS != 8 || w0.StaticBytes != static0 ||
		w0.CapacityBytes == nil || *w0.CapacityBytes != 0.000058*(1<<30) || w1.CapacityBytes != nil || rows[0].Infeasible == "" {
		t.Errorf("JSON fields: %s", js)
	}
}

func TestClusterMemoryFieldsAreChecked(t *testing.T) {
	for _, tc := range []struct{ yaml, want string }{
		{"name: x\nany_node: true\nnodes: [{name: a, memory_gib: -1}]\n", `node "a" memory_gib is -1, want a finite number >= 0`},
		{"name: x\nany_node: true\ndefault_memory_gib: -2\n", "default_memory_gib is -2"},
		{"name: x\nany_node: true\nmodel: {optimizer: adam}\n", `model.optimizer: unknown optimizer "adam" (want adamw, lamb or sgd)`},
		{"name: x\nany_node: true\nmodel: {dim: 4, heads: 8}\n", "model.heads is 8, more than dim 4"},
		{"name: x\nany_node: true\nmodel: {dim: 100000000}\n", "model.dim is 100000000, want 1..65536"},
		{"name: x\nany_node: true\nnodes: [{name: a, memory_gb: 1}]\n", `unknown key "memory_gb" in nodes[0] (did you mean "memory_gib"?)`},
	} {
		_, err := ParseCluster([]byte(tc.yaml))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: got %v, want %q", tc.yaml, err, tc.want)
		}
	}
	c, err := ParseCluster([]byte("name: x\nany_node: true\ndefault_memory_gib: 2\nnodes: [{name: a, memory_gib: 1}]\n"))
	if err != nil {
		t.Fatal(err)
	}
	_, a, _ := c.Lookup("a")
	_, other, _ := c.Lookup("elsewhere")
	if c.CapacityBytes(a) != 1<<30 || c.CapacityBytes(other) != 2<<30 {
		t.Errorf("capacities %v and %v, want 1 GiB (its own) and 2 GiB (the default)", c.CapacityBytes(a), c.CapacityBytes(other))
	}
}

func TestWriteMemoryPlot(t *testing.T) {
	c, err := ParseCluster([]byte(memoryClusterYAML))
	if err != nil {
		t.Fatal(err)
	}
	p, err := scheduler.Generate("1f1b", scheduler.Spec{Stages: 2, Microbatches: 4, Layers: 4, Nodes: []string{"a", "b"}})
	if err != nil {
		t.Fatal(err)
	}
	r, err := Run(p, c, Options{MemoryTimeline: true})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "mem.png")
	if err := WriteMemoryPlot(path, r); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatalf("not a PNG: %v", err)
	}
	if b := img.Bounds(); b.Dx() < 400 || b.Dy() < 300 {
		t.Errorf("image %v too small", b)
	}
	if err := WriteMemoryPlot(filepath.Join(t.TempDir(), "mem.gif"), r); err == nil || !strings.Contains(err.Error(), "unsupported image type") {
		t.Errorf("gif: %v", err)
	}
	r.Memory = nil
	if err := WriteMemoryPlot(path, r); err == nil || !strings.Contains(err.Error(), "no memory timeline") {
		t.Errorf("no timeline: %v", err)
	}
}
