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
//     go run ./bench/backends [-sizes 256K,1M,16M] [-min-time 1s] [-steps 6] [-up=true] [-big] [-cpuprofile FILE]
//
// -cpuprofile writes this process's CPU profile of the overhead rows,
// samples labelled side= and model= (the in-process server's goroutines
// are unlabelled; compute-serve is another process).
//
// Each row times its two sides run by run in alternation, so that both
// see the same load, and reports the median of the run-by-run ratios:
// the figure to read on a shared machine.
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
	"runtime/pprof"
	"sort"
	"strconv"
	"strings"
	"time"

	"stagecoach/compute"
	"stagecoach/compute/builtin"
	"stagecoach/compute/remote"
	"stagecoach/compute/serve"
	"stagecoach/internal/benchwarm"
	"stagecoach/model"
)

func main() {
	var (
		sizes   = flag.String("sizes", "256K,1M,16M", "tensor sizes for the hop")
		minTime = flag.Duration("min-time", 2*time.Second, "least time per row")
		steps   = flag.Int("steps", 6, "up: training steps per run")
		up      = flag.Bool("up", true, "run the up rows (they start processes and take a minute or two)")
		torchOn = flag.Bool("torch", true, "include the PyTorch backend's rows when torch is installed")
		big     = flag.Bool("big", false, "add an overhead row with a 16 MiB activation (the wider stage at microbatch 128: about a second a run)")
		profile = flag.String("cpuprofile", "", "write this process's CPU profile of the overhead rows here, each sample labelled with its side and model")
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
	if err := overheadRows(exe, *minTime, *profile, *big); err != nil {
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

// sides is what timeSides measured of each side: its median and fastest
// run, and the median of its run-by-run ratio to the first side (the
// figure that drift in the machine's load disturbs least).
type sides struct {
	median, best, ratio []float64
	rounds              int // timed rounds, after the warm-up's
}

// timeSides runs each of fs in turn, round after round, until minTime has
// passed (at least 9 rounds), so that every side sees the same load. It
// first runs rounds untimed until the process is in its steady state (see
// internal/benchwarm), for at most minTime: a long job runs in the steady
// state, so that is what the rows time.
func timeSides(minTime time.Duration, fs ...func() error) (sides, error) {
	err := benchwarm.Run(func() error {
		for _, f := range fs {
			if err := f(); err != nil {
				return err
			}
		}
		return nil
	}, minTime)
	if err != nil {
		return sides{}, err
	}
	runs := make([][]float64, len(fs))
	ratios := make([][]float64, len(fs))
	start := time.Now()
	for len(runs[0]) < 9 || time.Since(start) < minTime {
		times := make([]float64, len(fs))
		for i, f := range fs {
			t0 := time.Now()
			if err := f(); err != nil {
				return sides{}, err
			}
			times[i] = time.Since(t0).Seconds()
		}
		for i, t := range times {
			runs[i] = append(runs[i], t)
			ratios[i] = append(ratios[i], t/times[0])
		}
	}
	med := func(v []float64) float64 { sort.Float64s(v); return v[len(v)/2] }
	var s sides
	for i := range fs {
		s.median = append(s.median, med(runs[i]))
		s.best = append(s.best, runs[i][0]) // sorted by med
		s.ratio = append(s.ratio, med(ratios[i]))
	}
	s.rounds = len(runs[0])
	return s, nil
}

// echo's stages answer Forward with a copy of its input, made in memory
// the stage owns (as a compute's output buffers are): all that is left is
// the hop. It reads its input in place, as compute-serve does.
type echo struct{}
type echoStage struct {
	compute.Stage
	out []float32
}

func (echo) Name() string { return "echo" }
func (echo) Close() error { return nil }
func (echo) Load(context.Context, compute.LoadSpec) (compute.Stage, error) {
	return &echoStage{}, nil
}
func (*echoStage) Describe() compute.Description {
	return compute.Description{Backend: "echo", Width: 1024}
}
func (e *echoStage) Forward(_ int, x *compute.Tensor) (*compute.Tensor, error) {
	if cap(e.out) < len(x.Data) {
		e.out = make([]float32, len(x.Data))
	}
	e.out = e.out[:len(x.Data)]
	copy(e.out, x.Data)
	return &compute.Tensor{Shape: x.Shape, Data: e.out}, nil
}
func (*echoStage) Close() error { return nil }

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
	srv, err := serve.Start(echo{}, serve.Options{BorrowInputs: true}, "unix://"+sock)
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
	fmt.Println("Each time: the median run (the fastest in brackets). The ratio: the median of run-by-run ratios (the ratio of the medians in brackets).")
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
		t, err := timeSides(minTime,
			func() error { return echoSocket(a, b, buf, back) },
			func() error { _, err := st.Forward(0, x); return err })
		if err != nil {
			return err
		}
		bytes := float64(2 * 4 * rows * 1024)
		fmt.Printf("| %s | %.2f ms (%.2f), %.2f GB/s | %.2f ms (%.2f), %.2f GB/s | %.0f%% (%.0f%%) |\n", s,
			t.median[1]*1e3, t.best[1]*1e3, bytes/t.median[1]/1e9, t.median[0]*1e3, t.best[0]*1e3, bytes/t.median[0]/1e9, 100/t.ratio[1], 100*t.median[0]/t.median[1])
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

// split is what a remote backend's calls of one run took: their wall
// time as the client saw it, and the compute time the backend reported.
type split struct{ call, compute time.Duration }

// splits collects a split per run from remote.Options.Observe.
type splits struct {
	runs []split
	cur  split
}

func (s *splits) observe(_ string, call, compute time.Duration) {
	s.cur.call += call
	s.cur.compute += compute
}

// begin opens a run (calls outside runs, such as Load, are not counted);
// end closes it.
func (s *splits) begin() { s.cur = split{} }
func (s *splits) end()   { s.runs = append(s.runs, s.cur) }

// shares is the median, over the last n runs, of the round trip (the
// call's time outside the backend's compute) as a share of the compute,
// and the median compute time.
// Both backends here report their compute, so a run without it is an
// error, not a division by zero.
func (s *splits) shares(n int) (roundTrip, compute float64, err error) {
	runs := s.runs[len(s.runs)-n:]
	rt, c := make([]float64, len(runs)), make([]float64, len(runs))
	for i, r := range runs {
		if r.compute <= 0 {
			return 0, 0, errors.New("a backend reported no compute time (compute_nanos) in a timed run")
		}
		rt[i] = float64(r.call-r.compute) / float64(r.compute)
		c[i] = r.compute.Seconds()
	}
	med := func(v []float64) float64 { sort.Float64s(v); return v[len(v)/2] }
	return med(rt), med(c), nil
}

// overheadRows times a stage's Forward+Backward in process, through the
// protocol to the built-in model served in this same process (the
// protocol's own cost), and through `stagecoach compute-serve` (the
// protocol plus computing in a second process beside this one). A second
// table splits each remote call by the compute time its backend reported.
func overheadRows(exe string, minTime time.Duration, profile string, big bool) error {
	fmt.Println("## The protocol's overhead per action: one stage's Forward + Backward")
	fmt.Println()
	fmt.Println("Each time: the median run (the fastest in brackets). Each overhead against in process: the median of run-by-run ratios (the ratio of the medians in brackets).")
	fmt.Println()
	fmt.Println("| model | activation | in process | through the protocol, served in process | overhead | through compute-serve (a second process) | overhead |")
	fmt.Println("|---|---|---|---|---|---|---|")
	dir, err := os.MkdirTemp("", "overhead-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	addr := "unix://" + filepath.Join(dir, "s.sock")
	srv, err := serve.Start(builtin.Backend{}, serve.Options{BorrowInputs: true}, addr) // as compute-serve serves it
	if err != nil {
		return err
	}
	defer srv.Stop()
	var nearSplits, farSplits splits
	near, err := remote.Dial(context.Background(), addr, remote.Options{Observe: nearSplits.observe})
	if err != nil {
		return err
	}
	defer near.Close()
	far, err := remote.Start(context.Background(), remote.Command{Args: []string{exe, "compute-serve"}}, remote.Options{Observe: farSplits.observe})
	if err != nil {
		return err
	}
	defer far.Close()
	if profile != "" {
		f, err := os.Create(profile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	var splitRows []string
	for _, m := range []struct {
		name string
		cfg  model.Config
		b    int // microbatch
	}{
		{"default (dim 128, ctx 64)", model.Config{Layers: 4, Dim: 128, Heads: 4, Ctx: 64, Seed: 1}, 8},
		{"4x wider (dim 512, ctx 64)", model.Config{Layers: 4, Dim: 512, Heads: 8, Ctx: 64, Seed: 1}, 8},
		{"4x wider, microbatch 128", model.Config{Layers: 4, Dim: 512, Heads: 8, Ctx: 64, Seed: 1}, 128},
	} {
		if m.b > 8 && !big {
			continue
		}
		mj, _ := json.Marshal(m.cfg)
		spec := compute.LoadSpec{Model: mj, Shard: compute.ShardSpec{Lo: 1, Hi: 2}} // one block, as a 4-worker pipeline's middle stage
		var stages []compute.Stage
		for _, b := range []compute.Backend{builtin.Backend{}, near, far} {
			st, err := b.Load(context.Background(), spec)
			if err != nil {
				return err
			}
			defer st.Close()
			stages = append(stages, st)
		}
		b := m.b
		n := b * m.cfg.Ctx * m.cfg.Dim
		x := &compute.Tensor{Shape: []int{b, m.cfg.Ctx, m.cfg.Dim}, Data: make([]float32, n)}
		g := &compute.Tensor{Shape: []int{b, m.cfg.Ctx, m.cfg.Dim}, Data: make([]float32, n)}
		for i := range x.Data {
			x.Data[i], g.Data[i] = float32(i%97)/97-0.5, float32(i%89)/8900
		}
		// The actions: a microbatch's Forward and Backward. Gradients
		// accumulate over the runs, as over an iteration's microbatches
		// (ZeroGrad is once per iteration, not per action).
		step := func(st compute.Stage, side string, sp *splits) func() error {
			labels := pprof.Labels("side", side, "model", m.name)
			return func() (err error) {
				if sp != nil {
					sp.begin()
					defer sp.end()
				}
				pprof.Do(context.Background(), labels, func(context.Context) {
					var y, dx *compute.Tensor
					if y, err = st.Forward(0, x); err == nil {
						dx, err = st.Backward(0, g)
					}
					// A worker hands each output back once it has
					// sent it (compute.Recycler).
					if rc, ok := st.(compute.Recycler); ok {
						rc.Recycle(y)
						rc.Recycle(dx)
					}
				})
				return err
			}
		}
		t, err := timeSides(minTime, step(stages[0], "in process", nil), step(stages[1], "protocol in process", &nearSplits),
			step(stages[2], "compute-serve", &farSplits))
		if err != nil {
			return err
		}
		nearRT, nearC, err := nearSplits.shares(t.rounds)
		if err != nil {
			return err
		}
		farRT, farC, err := farSplits.shares(t.rounds)
		if err != nil {
			return err
		}
		splitRows = append(splitRows, fmt.Sprintf("| %s | %.2f ms | %.1f%% | %.2f ms | %.1f%% | %.1f%% |", m.name,
			nearC*1e3, 100*nearRT, farC*1e3, 100*farRT, 100*(farC/t.median[0]-1)))
		cell := func(i int) string { return fmt.Sprintf("%.2f ms (%.2f)", t.median[i]*1e3, t.best[i]*1e3) }
		over := func(i int) string {
			return fmt.Sprintf("%.1f%% (%.1f%%)", 100*(t.ratio[i]-1), 100*(t.median[i]/t.median[0]-1))
		}
		fmt.Printf("| %s | %d KiB | %s | %s | %s | %s | %s |\n", m.name, 4*n>>10, cell(0), cell(1), over(1), cell(2), over(2))
	}
	fmt.Println()
	fmt.Println("The same runs, each remote call split by the compute time its backend reported (compute_nanos): the round trip is the rest of the")
	fmt.Println("call's time (tensors' bytes, hand-overs between goroutines and processes). Medians over the runs; the last column is")
	fmt.Println("compute-serve's own compute against the in-process run, what computing in a second process beside this one costs.")
	fmt.Println()
	fmt.Println("| model | served in process: backend's compute | round trip / compute | compute-serve: backend's compute | round trip / compute | compute-serve's compute / in process |")
	fmt.Println("|---|---|---|---|---|---|")
	for _, r := range splitRows {
		fmt.Println(r)
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
