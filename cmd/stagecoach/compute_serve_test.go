package main

import (
	"context"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"stagecoach/compute"
	"stagecoach/compute/builtin"
	"stagecoach/compute/conformance"
	"stagecoach/compute/reference/referencetest"
	"stagecoach/compute/remote"
	"stagecoach/model"
)

// computeServeArgs runs this test binary as `stagecoach compute-serve`.
func computeServeArgs(t *testing.T) ([]string, []string) {
	return []string{selfExe(t), "compute-serve", "--parent-pid", strconv.Itoa(os.Getpid())},
		append(os.Environ(), "STAGECOACH_TEST_MAIN=1")
}

// TestComputeServeConformance runs the conformance suite on the built-in
// model behind `stagecoach compute-serve`, started by remote.Start.
func TestComputeServeConformance(t *testing.T) {
	args, env := computeServeArgs(t)
	conformance.Run(t, nil, conformance.Options{Command: args, Env: env})
}

// TestComputeServeExact trains a few GPipe steps of a three-stage split
// in process and through compute-serve: the losses and every parameter
// and optimizer moment must be the same to the bit.
func TestComputeServeExact(t *testing.T) {
	args, env := computeServeArgs(t)
	rb, err := remote.Start(context.Background(), remote.Command{Args: args, Env: env}, remote.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer rb.Close()
	specs := []compute.ShardSpec{{Lo: 0, Hi: 1, Embed: true}, {Lo: 1, Hi: 2}, {Lo: 2, Hi: conformance.Layers, Head: true}}
	local := loadStages(t, builtin.Backend{}, specs)
	far := loadStages(t, rb, specs)
	for step := 1; step <= 3; step++ {
		a := gpipeStep(t, local, step)
		b := gpipeStep(t, far, step)
		for i := range a {
			if math.Float64bits(a[i]) != math.Float64bits(b[i]) {
				t.Fatalf("step %d: losses in process %v, through compute-serve %v", step, a, b)
			}
		}
		t.Logf("step %d: losses %v", step, a)
	}
	for i := range specs {
		sa, err := local[i].State()
		if err != nil {
			t.Fatal(err)
		}
		sb, err := far[i].State()
		if err != nil {
			t.Fatal(err)
		}
		for j := range sa {
			for _, p := range [][2][]float32{{sa[j].W, sb[j].W}, {sa[j].M, sb[j].M}, {sa[j].V, sb[j].V}} {
				if len(p[0]) != len(p[1]) {
					t.Fatalf("%s: %d vs %d elements", sa[j].Name, len(p[0]), len(p[1]))
				}
				for k := range p[0] {
					if math.Float32bits(p[0][k]) != math.Float32bits(p[1][k]) {
						t.Fatalf("%s[%d]: %v in process, %v through compute-serve", sa[j].Name, k, p[0][k], p[1][k])
					}
				}
			}
		}
	}
}

func loadStages(t *testing.T, b compute.Backend, specs []compute.ShardSpec) []compute.Stage {
	t.Helper()
	var out []compute.Stage
	for _, sp := range specs {
		st, err := b.Load(context.Background(), compute.LoadSpec{Model: conformance.ModelJSON(conformance.Seed), Optim: conformance.DefaultOptim, Shard: sp})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = st.Close() })
		out = append(out, st)
	}
	return out
}

// gpipeStep drives one training step of stages in the model's order:
// ZeroGrad, every microbatch forward through all stages, Loss and
// Backward in ascending microbatch order, ScaleGrads(1/m), the global
// norm from SumSquares in canonical order, Step with its clip factor. The
// data depend only on step.
func gpipeStep(t *testing.T, stages []compute.Stage, step int) []float64 {
	t.Helper()
	const m = 3
	rng := rand.New(rand.NewPCG(uint64(step), 1))
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	for _, st := range stages {
		must(st.ZeroGrad())
	}
	outs := make([]*compute.Tensor, m)
	targets := make([][]int32, m)
	for mb := range m {
		x := &compute.Tensor{Shape: []int{conformance.B, conformance.T}, Data: make([]float32, conformance.B*conformance.T)}
		targets[mb] = make([]int32, len(x.Data))
		for i := range x.Data {
			x.Data[i] = float32(rng.IntN(conformance.Vocab))
			targets[mb][i] = int32(rng.IntN(conformance.Vocab))
		}
		for _, st := range stages {
			y, err := st.Forward(mb, x)
			must(err)
			x = y
		}
		outs[mb] = x
	}
	losses := make([]float64, m)
	for mb := range m {
		last := len(stages) - 1
		l, g, err := stages[last].Loss(mb, outs[mb], targets[mb])
		must(err)
		losses[mb] = l
		for i := last; i >= 0; i-- {
			g, err = stages[i].Backward(mb, g)
			must(err)
		}
	}
	type sq struct {
		index int
		v     float64
	}
	var sums []sq
	for _, st := range stages {
		must(st.ScaleGrads(1 / float32(m)))
		ss, err := st.SumSquares()
		must(err)
		for i, p := range st.Describe().Params {
			sums = append(sums, sq{p.Index, ss[i]})
		}
	}
	var total float64
	for i := range sums { // stages hold ascending index ranges
		if i > 0 && sums[i].index <= sums[i-1].index {
			t.Fatalf("parameter indexes out of canonical order: %d after %d", sums[i].index, sums[i-1].index)
		}
		total += sums[i].v
	}
	clip := model.ClipFactor(math.Sqrt(total), 1.0)
	for _, st := range stages {
		must(st.Step(step, 1e-2, clip))
	}
	return losses
}

// TestComputeServeStops: compute-serve exits 0 on SIGTERM, and refuses
// to start without an address.
func TestComputeServeStops(t *testing.T) {
	dir, err := os.MkdirTemp("", "cs")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	addr := "unix://" + filepath.Join(dir, "s.sock")
	cmd := exec.Command(selfExe(t), "compute-serve", "--listen", addr)
	cmd.Env = append(os.Environ(), "STAGECOACH_TEST_MAIN=1", remote.SocketEnv+"=")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	var b *remote.Backend
	for deadline := time.Now().Add(30 * time.Second); ; {
		if b, err = remote.Dial(context.Background(), addr, remote.Options{}); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("compute-serve did not answer: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	defer b.Close()
	if b.Name() != builtin.Name {
		t.Fatalf("backend %q", b.Name())
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("compute-serve after SIGTERM: %v, want exit 0", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "s.sock")); !os.IsNotExist(err) {
		t.Errorf("the socket is still there: %v", err)
	}
	_, stderr, code := runCLI(t, dir, "compute-serve")
	if code != 2 {
		t.Fatalf("compute-serve without an address: exit %d (%s)", code, stderr)
	}
}

// TestComputeServeMatchesModelTrainer drives compute-serve through the
// reference loop (compute/reference) and requires model.Trainer's step
// results, weights and moments, bit for bit, for two splits, both head
// layouts and both optimizers.
func TestComputeServeMatchesModelTrainer(t *testing.T) {
	args, env := computeServeArgs(t)
	rb, err := remote.Start(context.Background(), remote.Command{Args: args, Env: env}, remote.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer rb.Close()
	referencetest.MatchesModelTrainer(t, rb)
}
