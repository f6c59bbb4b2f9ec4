// Command backends measures what computing through a backend process
// costs, side by side in one run:
//
//  1. the hop: a tensor's round trip through the compute protocol (an
//     echo stage served in this process over a Unix socket, tensor bytes
//     through the shared-memory region) against the same bytes written and
//     read back over a plain Unix socket pair;
//
//  2. the protocol's overhead per action: a stage's Forward and Backward
//     computed in this process (the built-in Go model) against the same
//     stage through `stagecoach compute-serve`, for the default model and
//     a 4x wider one;
//
//  3. `stagecoach up` tokens/s with the built-in Go backend against the
//     PyTorch backend (when /usr/bin/python3 can import torch; skipped with
//     a message otherwise), on the default model and the 4x wider one.
//
//     go run ./bench/backends [-sizes 256K,1M,16M] [-min-time 1s] [-steps 6] [-up=true]
//
// Rows alternate the two sides so that both see the same load, and report
// each side's fastest run; the ratios are the figures to read on a shared
// machine.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"time"

	"stagecoach/compute"
	"stagecoach/compute/builtin"
	"stagecoach/compute/remote"
	"stagecoach/compute/serve"
	"stagecoach/model"
)

func main() {
	var (
		sizes   = flag.String("sizes", "256K,1M,16M", "tensor sizes for the hop")
		minTime = flag.Duration("min-time", time.Second, "least time per side and row")
		steps   = flag.Int("steps", 6, "up: training steps per run")
		up      = flag.Bool("up", true, "run the up rows (they start processes and take a minute or two)")
		torchOn = flag.Bool("torch", true, "include the PyTorch backend's rows when torch is installed")
	)
	flag.Parse()
	exe, err := buildStagecoach()
	if err != nil {
		fail(err)
	}
	fmt.Printf("# %s, %d CPUs, %s\n\n", time.Now().UTC().Format("2006-01-02"), runtime.NumCPU(), cpuModel())
	if err := hopRows(*sizes, *minTime); err != nil {
		fail(err)
	}
	if err := overheadRows(exe, *minTime); err != nil {
		fail(err)
	}
	if *up {
		if err := upRows(exe, *steps, *torchOn); err != nil {
			fail(err)
		}
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "bench/backends:", err)
	os.Exit(1)
}

// buildStagecoach builds the command into a temporary directory.
func buildStagecoach() (string, error) {
	dir, err := os.MkdirTemp("", "bench-backends-")
	if err != nil {
		return "", err
	}
	exe := filepath.Join(dir, "stagecoach")
	cmd := exec.Command("go", "build", "-o", exe, "./cmd/stagecoach")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("build stagecoach (run from the repository root): %w", err)
	}
	return exe, nil
}

func cpuModel() string {
	b, _ := os.ReadFile("/proc/cpuinfo")
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "model name") {
			_, v, _ := strings.Cut(l, ":")
			return strings.TrimSpace(v)
		}
	}
	return "unknown CPU"
}

// timing is a side's runs: the fastest (what other load disturbs least)
// and the median (what a run typically costs, collections included).
type timing struct{ best, median float64 }

// timeIt runs f until minTime has passed (at least 5 times, after two
// warm-up runs).
func timeIt(minTime time.Duration, f func() error) (timing, error) {
	for range 2 {
		if err := f(); err != nil {
			return timing{}, err
		}
	}
	var runs []float64
	start := time.Now()
	for len(runs) < 5 || time.Since(start) < minTime {
		t0 := time.Now()
		if err := f(); err != nil {
			return timing{}, err
		}
		runs = append(runs, time.Since(t0).Seconds())
	}
	sort.Float64s(runs)
	return timing{best: runs[0], median: runs[len(runs)/2]}, nil
}

// merge keeps the better of two timings of one side.
func (t timing) merge(u timing) timing {
	if t.best == 0 {
		return u
	}
	return timing{best: min(t.best, u.best), median: min(t.median, u.median)}
}

// echo's stages return Forward's input: all that is left is the hop.
type echo struct{}
type echoStage struct{ compute.Stage }

func (echo) Name() string { return "echo" }
func (echo) Close() error { return nil }
func (echo) Load(context.Context, compute.LoadSpec) (compute.Stage, error) {
	return echoStage{}, nil
}
func (echoStage) Describe() compute.Description {
	return compute.Description{Backend: "echo", Width: 1024}
}
func (echoStage) Forward(_ int, x *compute.Tensor) (*compute.Tensor, error) { return x, nil }
func (echoStage) Close() error                                              { return nil }

func parseSize(s string) (int, error) {
	mult := 1
	switch {
	case strings.HasSuffix(s, "K"):
		mult, s = 1<<10, strings.TrimSuffix(s, "K")
	case strings.HasSuffix(s, "M"):
		mult, s = 1<<20, strings.TrimSuffix(s, "M")
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 {
		return 0, fmt.Errorf("size %q: want e.g. 256K or 1M", s)
	}
	return n * mult, nil
}

func hopRows(sizes string, minTime time.Duration) error {
	dir, err := os.MkdirTemp("", "hop-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "s.sock")
	srv, err := serve.Start(echo{}, serve.Options{}, "unix://"+sock)
	if err != nil {
		return err
	}
	defer srv.Stop()
	rb, err := remote.Dial(context.Background(), "unix://"+sock, remote.Options{})
	if err != nil {
		return err
	}
	defer rb.Close()
	st, err := rb.Load(context.Background(), compute.LoadSpec{})
	if err != nil {
		return err
	}
	a, b, err := socketPair(dir)
	if err != nil {
		return err
	}
	defer a.Close()
	defer b.Close()
	fmt.Println("## The hop: a tensor's round trip, bytes/s counted both ways")
	fmt.Println()
	fmt.Println("Each cell: the median run (the fastest in brackets).")
	fmt.Println()
	fmt.Println("| tensor | compute protocol | plain Unix socket | protocol / socket |")
	fmt.Println("|---|---|---|---|")
	for _, s := range strings.Split(sizes, ",") {
		n, err := parseSize(strings.TrimSpace(s))
		if err != nil {
			return err
		}
		rows := n / 4096
		x := &compute.Tensor{Shape: []int{1, rows, 1024}, Data: make([]float32, rows*1024)}
		buf := make([]byte, n)
		back := make([]byte, n)
		var tp, ts timing
		for range 2 { // alternate the sides
			p, err := timeIt(minTime/2, func() error { _, err := st.Forward(0, x); return err })
			if err != nil {
				return err
			}
			q, err := timeIt(minTime/2, func() error { return echoSocket(a, b, buf, back) })
			if err != nil {
				return err
			}
			tp, ts = tp.merge(p), ts.merge(q)
		}
		bytes := float64(2 * 4 * rows * 1024)
		fmt.Printf("| %s | %.2f ms (%.2f), %.2f GB/s | %.2f ms (%.2f), %.2f GB/s | %.0f%% (%.0f%%) |\n", s,
			tp.median*1e3, tp.best*1e3, bytes/tp.median/1e9, ts.median*1e3, ts.best*1e3, bytes/ts.median/1e9, 100*ts.median/tp.median, 100*ts.best/tp.best)
	}
	fmt.Println()
	return nil
}

func socketPair(dir string) (net.Conn, net.Conn, error) {
	lis, err := net.Listen("unix", filepath.Join(dir, "raw.sock"))
	if err != nil {
		return nil, nil, err
	}
	defer lis.Close()
	ch := make(chan net.Conn, 1)
	go func() {
		c, err := lis.Accept()
		if err != nil {
			ch <- nil
			return
		}
		ch <- c
	}()
	a, err := net.Dial("unix", filepath.Join(dir, "raw.sock"))
	if err != nil {
		return nil, nil, err
	}
	b := <-ch
	if b == nil {
		return nil, nil, errors.New("accept failed")
	}
	// The peer echoes whatever arrives.
	go func() { _, _ = io.Copy(b, b) }()
	return a, b, nil
}

func echoSocket(a, _ net.Conn, buf, back []byte) error {
	errc := make(chan error, 1)
	go func() { _, err := a.Write(buf); errc <- err }()
	if _, err := io.ReadFull(a, back); err != nil {
		return err
	}
	return <-errc
}

// overheadRows times a stage's Forward+Backward in process and through
// compute-serve.
func overheadRows(exe string, minTime time.Duration) error {
	fmt.Println("## The protocol's overhead per action: one stage's Forward + Backward")
	fmt.Println()
	fmt.Println("Each cell: the median run (the fastest in brackets).")
	fmt.Println()
	fmt.Println("| model | activation | in process | through compute-serve | overhead |")
	fmt.Println("|---|---|---|---|---|")
	rb, err := remote.Start(context.Background(), remote.Command{Args: []string{exe, "compute-serve"}}, remote.Options{})
	if err != nil {
		return err
	}
	defer rb.Close()
	for _, m := range []struct {
		name string
		cfg  model.Config
	}{
		{"default (dim 128, ctx 64)", model.Config{Layers: 4, Dim: 128, Heads: 4, Ctx: 64, Seed: 1}},
		{"4x wider (dim 512, ctx 64)", model.Config{Layers: 4, Dim: 512, Heads: 8, Ctx: 64, Seed: 1}},
	} {
		mj, _ := json.Marshal(m.cfg)
		spec := compute.LoadSpec{Model: mj, Shard: compute.ShardSpec{Lo: 1, Hi: 2}} // one block, as a 4-worker pipeline's middle stage
		local, err := builtin.Backend{}.Load(context.Background(), spec)
		if err != nil {
			return err
		}
		far, err := rb.Load(context.Background(), spec)
		if err != nil {
			return err
		}
		const b = 8
		n := b * m.cfg.Ctx * m.cfg.Dim
		x := &compute.Tensor{Shape: []int{b, m.cfg.Ctx, m.cfg.Dim}, Data: make([]float32, n)}
		g := &compute.Tensor{Shape: []int{b, m.cfg.Ctx, m.cfg.Dim}, Data: make([]float32, n)}
		for i := range x.Data {
			x.Data[i], g.Data[i] = float32(i%97)/97-0.5, float32(i%89)/8900
		}
		step := func(st compute.Stage) func() error {
			return func() error {
				if err := st.ZeroGrad(); err != nil {
					return err
				}
				if _, err := st.Forward(0, x); err != nil {
					return err
				}
				_, err := st.Backward(0, g)
				return err
			}
		}
		var tl, tr timing
		for range 2 {
			a, err := timeIt(minTime/2, step(local))
			if err != nil {
				return err
			}
			c, err := timeIt(minTime/2, step(far))
			if err != nil {
				return err
			}
			tl, tr = tl.merge(a), tr.merge(c)
		}
		fmt.Printf("| %s | %d KiB | %.2f ms (%.2f) | %.2f ms (%.2f) | %.1f%% (%.1f%%) |\n", m.name, 4*n>>10,
			tl.median*1e3, tl.best*1e3, tr.median*1e3, tr.best*1e3, 100*(tr.median-tl.median)/tl.median, 100*(tr.best-tl.best)/tl.best)
		_ = local.Close()
		_ = far.Close()
	}
	fmt.Println()
	return nil
}

// upRows runs `stagecoach up` with each backend and prints tokens/s.
func upRows(exe string, steps int, torchOn bool) error {
	root, err := os.Getwd()
	if err != nil {
		return err
	}
	torchCmd := ""
	if torchOn {
		if out, err := exec.Command("/usr/bin/python3", "-c", "import torch, grpc, google.protobuf").CombinedOutput(); err != nil {
			fmt.Printf("(PyTorch rows skipped: /usr/bin/python3 cannot import torch, grpc and protobuf: %s)\n\n", strings.TrimSpace(string(out)))
		} else {
			torchCmd = "/usr/bin/python3 -m stagecoach_torch --threads 1 --model " + filepath.Join(root, "examples/torch/gpt.py")
		}
	}
	fmt.Printf("## `stagecoach up --workers 3 --steps %d`: tokens/s\n\n", steps)
	fmt.Println("| model | Go backend (in the worker) | PyTorch backend | PyTorch / Go |")
	fmt.Println("|---|---|---|---|")
	for _, m := range []struct {
		name  string
		flags []string
	}{
		{"default (4 layers, dim 128, ctx 64)", nil},
		{"4x wider (dim 512, 8 heads)", []string{"--dim", "512", "--heads", "8"}},
	} {
		goTok, err := runUp(exe, steps, m.flags, "")
		if err != nil {
			return err
		}
		torch := "skipped"
		ratio := ""
		if torchCmd != "" {
			tt, err := runUp(exe, steps, m.flags, torchCmd)
			if err != nil {
				return err
			}
			torch, ratio = fmt.Sprintf("%.0f", tt), fmt.Sprintf("%.2f", tt/goTok)
		}
		fmt.Printf("| %s | %.0f | %s | %s |\n", m.name, goTok, torch, ratio)
	}
	fmt.Println()
	return nil
}

func runUp(exe string, steps int, flags []string, backend string) (float64, error) {
	out, err := os.MkdirTemp("", "bench-up-")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(out)
	args := append([]string{"up", "--workers", "3", "--steps", strconv.Itoa(steps), "--out", filepath.Join(out, "run")}, flags...)
	if backend != "" {
		args = append(args, "--backend-cmd", backend)
	}
	cmd := exec.Command(exe, args...)
	cmd.Env = append(os.Environ(), "PYTHONPATH=backends/torch")
	if b, err := cmd.CombinedOutput(); err != nil {
		return 0, fmt.Errorf("stagecoach %s: %v\n%s", strings.Join(args, " "), err, b)
	}
	b, err := os.ReadFile(filepath.Join(out, "run", "summary.json"))
	if err != nil {
		return 0, err
	}
	var s struct {
		TokensPerS float64 `json:"tokens_per_s"`
	}
	if err := json.Unmarshal(b, &s); err != nil {
		return 0, err
	}
	return s.TokensPerS, nil
}
