// Package torch_test runs the PyTorch backend's Python tests
// (backends/torch/tests) with Debian's interpreter, so `go test ./...`
// covers the backend: gradients against finite differences, exact state
// round trips, refusals of bad input, and split-versus-whole exactness.
package torch_test

import (
	"context"
	"encoding/json"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"stagecoach/compute"
	"stagecoach/compute/conformance"
	"stagecoach/compute/reference"
	"stagecoach/compute/remote"
	"stagecoach/model"
)

// python is the interpreter the backend runs on: Debian's, which sees the
// python3-torch, python3-grpcio and python3-protobuf packages (a pyenv
// python3 on PATH may not).
const python = "/usr/bin/python3"

// needPython skips (or, with STAGECOACH_REQUIRE_TORCH=1, fails) when the
// interpreter cannot import what the backend needs.
func needPython(t *testing.T) {
	for _, mod := range []string{"torch", "grpc", "google.protobuf"} {
		if out, err := exec.Command(python, "-c", "import "+mod).CombinedOutput(); err != nil {
			msg := python + " cannot import " + mod + " (apt-get install python3-torch python3-grpcio python3-protobuf): " + lastLine(out, err)
			if os.Getenv("STAGECOACH_REQUIRE_TORCH") == "1" {
				t.Fatal(msg)
			}
			t.Skip(msg)
		}
	}
}

func TestPythonSuite(t *testing.T) {
	if testing.Short() {
		t.Skip("the Python suite takes tens of seconds; skipped with -short")
	}
	needPython(t)
	cmd := exec.Command(python, "-m", "unittest", "discover", "-v", "-s", "tests")
	cmd.Env = append(os.Environ(), "OMP_NUM_THREADS=1", "OPENBLAS_NUM_THREADS=1", "MKL_NUM_THREADS=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s -m unittest discover -s backends/torch/tests: %v\n%s", python, err, out)
	}
	t.Logf("%s", out)
}

func lastLine(out []byte, err error) string {
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if l := lines[len(lines)-1]; l != "" {
		return l
	}
	return err.Error()
}

// compareScript loads the Go model's weights into examples/torch/gpt.py
// with load_checkpoint, computes the loss and the gradients of the same
// microbatch in float32, and prints the differences from Go's as JSON.
const compareScript = `
import json, sys, torch
sys.path.insert(0, ".")
from stagecoach_torch import load_checkpoint, read_safetensors
from stagecoach_torch.stage import load_model_file
d = sys.argv[1]
job = json.load(open(d + "/job.json"))
spec = load_model_file("../../examples/torch/gpt.py")(job["model"])
mods = [spec.embed()] + [b() for b in spec.blocks] + [spec.head()]
class M: pass
m = M(); m.embed, m.blocks, m.head = mods[0], mods[1:-1], mods[-1]
names = load_checkpoint(m, d + "/model.safetensors")
ids = torch.tensor(job["tokens"]).reshape(job["b"], job["t"])
h = mods[0](ids)
for blk in mods[1:-1]:
    h = blk(h)
loss = spec.loss(mods[-1](h), torch.tensor(job["targets"]).reshape(job["b"], job["t"]))
loss.backward()
grads, _ = read_safetensors(d + "/grads.safetensors")
params = dict(p for mod in [mods[0]] for p in mod.named_parameters())
params.update(("blocks.%d.%s" % (l, n), p) for l, b in enumerate(mods[1:-1]) for n, p in b.named_parameters())
params.update(mods[-1].named_parameters())
worst = max(float(((params[n].grad - g).abs() / (g.abs().max() + 1e-12)).max()) for n, g in grads.items())
print(json.dumps({"loss": loss.item(), "names": names, "worst_grad": worst}))
`

// TestGoCheckpointInTorchGPT: a checkpoint of the Go model loads by name
// into examples/torch/gpt.py, which then computes the Go model's loss and
// gradients (to float32 rounding): the two are one architecture.
func TestGoCheckpointInTorchGPT(t *testing.T) {
	needPython(t)
	cfg := model.Config{Layers: 2, Dim: 16, Heads: 2, Ctx: 8, Seed: 5}.WithDefaults()
	sh, err := model.NewShard(cfg, model.ShardSpec{Lo: 0, Hi: 2, Embed: true, Head: true})
	if err != nil {
		t.Fatal(err)
	}
	const b, tt = 2, 8
	tokens, targets := make([]int32, b*tt), make([]int32, b*tt)
	for i := range tokens {
		tokens[i] = int32((i*37 + 11) % cfg.Vocab)
		targets[i] = int32((i*53 + 7) % cfg.Vocab)
	}
	sh.ZeroGrad()
	h, err := sh.Forward(0, model.TokenActivations(tokens, b, tt))
	if err != nil {
		t.Fatal(err)
	}
	loss, g, err := sh.Loss(0, h, targets)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sh.Backward(0, g); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	var ws, gs []model.STensor
	for _, p := range sh.Params() {
		ws = append(ws, model.STensor{Name: p.Name, Shape: p.Shape, Data: p.W})
		gs = append(gs, model.STensor{Name: p.Name, Shape: p.Shape, Data: p.G})
	}
	write := func(name string, ts []model.STensor) {
		f, err := os.Create(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if err := model.WriteSafetensors(f, ts, nil); err != nil {
			t.Fatal(err)
		}
	}
	write("model.safetensors", ws)
	write("grads.safetensors", gs)
	job, _ := json.Marshal(map[string]any{"model": cfg, "tokens": tokens, "targets": targets, "b": b, "t": tt})
	if err := os.WriteFile(filepath.Join(dir, "job.json"), job, 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(python, "-c", compareScript, dir).Output()
	if err != nil {
		t.Fatalf("%s comparing with the Go model: %v\n%s", python, err, exitStderr(err))
	}
	var got struct {
		Loss      float64  `json:"loss"`
		Names     []string `json:"names"`
		WorstGrad float64  `json:"worst_grad"`
	}
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("bad output %q: %v", out, err)
	}
	if len(got.Names) != len(ws) {
		t.Errorf("loaded %d tensors %v, the Go model has %d", len(got.Names), got.Names, len(ws))
	}
	if d := got.Loss - loss; d > 1e-5 || d < -1e-5 {
		t.Errorf("torch loss %.7f, Go loss %.7f", got.Loss, loss)
	}
	// relative to each tensor's largest gradient element; float32 rounding
	// in two summation orders stays far below this
	if got.WorstGrad > 1e-4 {
		t.Errorf("torch gradients differ from Go's by up to %.2g of the tensor's largest element", got.WorstGrad)
	}
	t.Logf("loss Go %.7f torch %.7f; worst gradient difference %.2g", loss, got.Loss, got.WorstGrad)
}

func exitStderr(err error) string {
	if ee, ok := err.(*exec.ExitError); ok {
		return string(ee.Stderr)
	}
	return ""
}

// stepScript runs the torch backend's optimizer on the Go model's weights
// and gradient for two steps and writes the resulting state.
const stepScript = `
import json, sys, torch
sys.path.insert(0, ".")
from stagecoach_torch import read_safetensors, write_safetensors
from stagecoach_torch.stage import Stage, load_model_file
d = sys.argv[1]
job = json.load(open(d + "/job.json"))
cfg = job["model"]
st = Stage(load_model_file("../../examples/torch/gpt.py"), cfg, job["optim"], 0, cfg["layers"], True, True, 1 << 28)
w, _ = read_safetensors(d + "/model.safetensors")
g, _ = read_safetensors(d + "/grads.safetensors")
st.set_state([(pre + p.name, w[p.name] if not pre else torch.zeros_like(w[p.name])) for p in st.params for pre in ("", "optim.m.", "optim.v.")])
st.set_grads(torch.cat([g[p.name].reshape(-1) for p in st.params]))
for step in (1, 2):
    st.step(step, job["lr"], 1.0)
write_safetensors(d + "/after.safetensors", st.state())
`

// TestOptimizerMatchesGo: AdamW and LAMB steps of the torch backend give
// the Go optimizer's weights and moments, bit for bit (both compute in
// float64 with the formulas of model/optim.go and store float32).
func TestOptimizerMatchesGo(t *testing.T) {
	needPython(t)
	for _, kind := range []string{"adamw", "lamb"} {
		t.Run(kind, func(t *testing.T) {
			cfg := model.Config{Layers: 1, Dim: 16, Heads: 2, Ctx: 8, Seed: 9}.WithDefaults()
			sh, err := model.NewShard(cfg, model.ShardSpec{Lo: 0, Hi: 1, Embed: true, Head: true})
			if err != nil {
				t.Fatal(err)
			}
			oc := model.OptimConfig{Kind: kind}
			opt, err := model.NewOptimizer(oc, sh.Params())
			if err != nil {
				t.Fatal(err)
			}
			dir := t.TempDir()
			var ws, gs []model.STensor
			for i, p := range sh.Params() {
				for j := range p.G {
					p.G[j] = float32(math.Sin(float64(7*i+j))) * 1e-2
				}
				ws = append(ws, model.STensor{Name: p.Name, Shape: p.Shape, Data: append([]float32(nil), p.W...)})
				gs = append(gs, model.STensor{Name: p.Name, Shape: p.Shape, Data: p.G})
			}
			writeST(t, filepath.Join(dir, "model.safetensors"), ws)
			writeST(t, filepath.Join(dir, "grads.safetensors"), gs)
			const lr = 3e-3
			job, _ := json.Marshal(map[string]any{"model": cfg, "optim": oc, "lr": lr})
			if err := os.WriteFile(filepath.Join(dir, "job.json"), job, 0o644); err != nil {
				t.Fatal(err)
			}
			opt.Update(1, lr)
			opt.Update(2, lr)
			if out, err := exec.Command(python, "-c", stepScript, dir).CombinedOutput(); err != nil {
				t.Fatalf("%s running the torch optimizer: %v\n%s", python, err, out)
			}
			after, _, err := model.ReadSafetensorsFile(filepath.Join(dir, "after.safetensors"))
			if err != nil {
				t.Fatal(err)
			}
			got := map[string][]float32{}
			for _, st := range after {
				got[st.Name] = st.Data
			}
			for _, st := range opt.States {
				for _, c := range []struct {
					name string
					want []float32
				}{{st.T.Name, st.T.W}, {"optim.m." + st.T.Name, st.M}, {"optim.v." + st.T.Name, st.V}} {
					have := got[c.name]
					if len(have) != len(c.want) {
						t.Fatalf("%s: torch wrote %d elements, Go has %d", c.name, len(have), len(c.want))
					}
					for j := range have {
						if math.Float32bits(have[j]) != math.Float32bits(c.want[j]) {
							t.Fatalf("%s[%d]: torch %v, Go %v", c.name, j, have[j], c.want[j])
						}
					}
				}
			}
		})
	}
}

func writeST(t *testing.T, path string, ts []model.STensor) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := model.WriteSafetensors(f, ts, nil); err != nil {
		t.Fatal(err)
	}
}

// TestConformance runs the conformance suite every backend must pass
// (compute/conformance) on examples/torch/gpt.py, started by
// compute/remote as the worker starts it. The suite's model is the Go
// model's shape and names, which gpt.py has.
func TestConformance(t *testing.T) {
	if testing.Short() {
		t.Skip("the conformance suite starts the backend a dozen times; skipped with -short")
	}
	needPython(t)
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	conformance.Run(t, nil, conformance.Options{
		Command: []string{python, "-m", "stagecoach_torch", "--model", filepath.Join(root, "examples", "torch", "gpt.py")},
		Env:     append(os.Environ(), "PYTHONPATH="+filepath.Join(root, "backends", "torch")),
	})
}

// TestPipelinedEqualsSingleProcess trains both example models on the torch
// backend, started by compute/remote, with compute/reference (the training
// step of model.Trainer, stage by stage): split into 2 stages, head last
// and head first, the losses, weights and moments of 3 steps equal those of
// the whole model in one stage, bit for bit.
func TestPipelinedEqualsSingleProcess(t *testing.T) {
	needPython(t)
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	for _, file := range []string{"gpt.py", "mixer.py"} {
		t.Run(file, func(t *testing.T) {
			ctx := context.Background()
			b, err := remote.Start(ctx, remote.Command{
				Args: []string{python, "-m", "stagecoach_torch", "--model", filepath.Join(root, "examples", "torch", file)},
				Env:  append(os.Environ(), "PYTHONPATH="+filepath.Join(root, "backends", "torch")),
			}, remote.Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			run := func(stages int, layout model.Layout) ([]float64, []compute.ParamState) {
				cfg := model.TrainConfig{
					Model:        model.Config{Layers: 4, Dim: 16, Heads: 2, Ctx: 8, Seed: 3},
					Stages:       stages,
					Layout:       layout,
					Microbatches: 3, MicrobatchSize: 2,
					Optim: model.OptimConfig{Kind: "adamw", LR: 1e-2, TotalSteps: 3, ClipNorm: 0.5},
				}
				tr, err := reference.New(ctx, b, cfg)
				if err != nil {
					t.Fatal(err)
				}
				defer tr.Close()
				rng := rand.New(rand.NewPCG(1, 2))
				sample := func(dst []int32) error {
					for i := range dst {
						dst[i] = int32(rng.IntN(256))
					}
					return nil
				}
				var losses []float64
				for range 3 {
					r, err := tr.TrainStep(sample)
					if err != nil {
						t.Fatal(err)
					}
					losses = append(losses, r.Loss)
				}
				st, err := tr.States()
				if err != nil {
					t.Fatal(err)
				}
				return losses, st
			}
			wantLoss, want := run(1, model.HeadLast)
			if !(wantLoss[2] < wantLoss[0]) {
				t.Errorf("losses %v: training does not learn", wantLoss)
			}
			for _, layout := range []model.Layout{model.HeadLast, model.HeadFirst} {
				gotLoss, got := run(2, layout)
				for i := range wantLoss {
					if math.Float64bits(gotLoss[i]) != math.Float64bits(wantLoss[i]) {
						t.Errorf("layout %d: step %d loss %v, one stage %v", layout, i+1, gotLoss[i], wantLoss[i])
					}
				}
				if len(got) != len(want) {
					t.Fatalf("layout %d: %d tensors, one stage %d", layout, len(got), len(want))
				}
				for i := range want {
					for _, c := range [][2][]float32{{got[i].W, want[i].W}, {got[i].M, want[i].M}, {got[i].V, want[i].V}} {
						for j := range c[1] {
							if math.Float32bits(c[0][j]) != math.Float32bits(c[1][j]) {
								t.Fatalf("layout %d: %s element %d: %v, one stage %v", layout, want[i].Name, j, c[0][j], c[1][j])
							}
						}
					}
				}
			}
		})
	}
}
