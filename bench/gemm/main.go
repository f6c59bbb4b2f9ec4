// Command gemm compares internal/sgemm's assembly kernel (AVX-512 where
// the CPU has it, else AVX2/FMA; STAGECOACH_GEMM=avx2 picks the narrower)
// with gonum's pure-Go Sgemm side by side in one run: GFLOP/s on square
// matrices and on the model's own GEMM shapes, with one thread and with
// two, against the single-core peak computed from the clock /proc/cpuinfo
// reports and the kernel's vector width (two FMA units of 8 float32 lanes,
// 32 flops per cycle, with AVX2; of 16 lanes, 64, with AVX-512). It then times training
// steps of the reference model with each kernel and, when /usr/bin/python3
// can import torch, the same model in PyTorch on the same threads.
//
//	go run ./bench/gemm [-sizes 256,512,1024,2048] [-threads 1,2] [-min-time 1s] [-train-steps 3] [-torch=true]
//
// Each row alternates the two kernels so that both see the same load;
// the ratio is the figure to read on a shared machine.
package main

import (
	"errors"
	"flag"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"gonum.org/v1/gonum/blas"
	"gonum.org/v1/gonum/blas/blas32"

	"stagecoach/internal/benchwarm"
	"stagecoach/internal/sgemm"
	"stagecoach/model"
)

func main() {
	var (
		sizes   = flag.String("sizes", "256,512,1024,2048", "square sizes")
		threads = flag.String("threads", "1,2", "thread counts (GOMAXPROCS for gonum, Threads for the kernel)")
		minTime = flag.Duration("min-time", time.Second, "least time per kernel and row")
		steps   = flag.Int("train-steps", 3, "timed training steps per model and kernel (0: skip training)")
		torch   = flag.Bool("torch", true, "time the same model in PyTorch when /usr/bin/python3 imports torch")
	)
	flag.StringVar(&torchScript, "torch-model", "examples/torch/throughput_model.py", "the PyTorch model script (run from the repository's top)")
	flag.Parse()
	if err := run(*sizes, *threads, *minTime, *steps, *torch); err != nil {
		fmt.Fprintln(os.Stderr, "gemm:", err)
		os.Exit(1)
	}
}

type shape struct {
	name    string
	tA, tB  bool
	m, n, k int
}

// modelShapes lists the dense products of one block's forward and
// backward for a model (n = microbatch·ctx rows), the head, and one
// attention head's products.
func modelShapes(tag string, cfg model.TrainConfig) []shape {
	c := cfg.Model.WithDefaults()
	n, d, h, t, hd := cfg.MicrobatchSize*c.Ctx, c.Dim, c.Hidden, c.Ctx, c.Dim/c.Heads
	return []shape{
		{tag + " qkv x·Wqkv", false, false, n, 3 * d, d},
		{tag + " mlp x·W1", false, false, n, h, d},
		{tag + " mlp u·W2", false, false, n, d, h},
		{tag + " head x·Wh", false, false, n, c.Vocab, d},
		{tag + " dW1 = xᵀ·g", true, false, d, h, n},
		{tag + " dx = g·W1ᵀ", false, true, n, d, h},
		{tag + " attn Q·Kᵀ", false, true, t, t, hd},
		{tag + " attn P·V", false, false, t, hd, t},
	}
}

var (
	defaultModel = model.TrainConfig{Model: model.Config{Layers: 4, Dim: 128, Heads: 4, Ctx: 64, Seed: 1}, Microbatches: 4, MicrobatchSize: 8}
	// One microbatch per step keeps gonum's steps of the wide model under
	// a minute; tokens/s hardly depends on the microbatch count.
	wideModel = model.TrainConfig{Model: model.Config{Layers: 8, Dim: 512, Heads: 4, Ctx: 256, Seed: 1}, Microbatches: 1, MicrobatchSize: 8}
)

func run(sizeList, threadList string, minTime time.Duration, steps int, torch bool) error {
	sizes, err := ints("-sizes", sizeList)
	if err != nil {
		return err
	}
	ths, err := ints("-threads", threadList)
	if err != nil {
		return err
	}
	flopsPerCycle := 0.0
	switch sgemm.Kernel() {
	case "avx512":
		flopsPerCycle = 64
	case "avx2-fma":
		flopsPerCycle = 32
	default:
		return fmt.Errorf("no assembly kernel is in use here (kernel %q; CPU without AVX2+FMA, or %s=go)", sgemm.Kernel(), sgemm.EnvVar)
	}
	cpuName, mhz := cpuInfo()
	peak := mhz * flopsPerCycle / 1000
	fmt.Printf("%s, %d CPUs, %.0f MHz, kernel %s: single-core peak %.1f GFLOP/s (%.0f flops/cycle); %s\n", cpuName, runtime.NumCPU(), mhz, sgemm.Kernel(), peak, flopsPerCycle, time.Now().UTC().Format(time.RFC3339))
	var shapes []shape
	for _, s := range sizes {
		shapes = append(shapes, shape{fmt.Sprintf("square %d", s), false, false, s, s, s})
	}
	shapes = append(shapes, modelShapes("default", defaultModel)...)
	shapes = append(shapes, modelShapes("d512", wideModel)...)

	fmt.Println("\nGFLOP/s per wall second, and per CPU second (process user+system time: what the")
	fmt.Println("cores did while this process ran, unaffected by time other processes took); % of")
	fmt.Println("peak is the asm kernel's per-CPU-second rate over the single-core peak")
	fmt.Printf("\n%-24s %-16s %3s %9s %9s %6s | %9s %9s %6s %7s\n", "shape", "m×n×k", "thr", "asm wall", "gonum", "ratio", "asm cpu", "gonum", "ratio", "% peak")
	for _, s := range shapes {
		for _, th := range ths {
			w, c := timeShape(s, th, minTime)
			fmt.Printf("%-24s %-16s %3d %9.1f %9.1f %5.1fx | %9.1f %9.1f %5.1fx %6.0f%%\n", s.name, fmt.Sprintf("%d×%d×%d", s.m, s.n, s.k), th,
				w[0], w[1], w[0]/w[1], c[0], c[1], c[0]/c[1], 100*c[0]/peak)
		}
	}
	if steps <= 0 {
		return nil
	}
	fmt.Printf("\ntraining tokens/s (%d timed steps after a warm-up of up to 2 s, random tokens; default model 4×8 sequences a step, d512 1×8)\n", steps)
	fmt.Printf("%-36s %3s %9s %9s %6s | %9s %9s %6s | %9s\n", "model", "thr", "asm wall", "gonum", "ratio", "asm cpu", "gonum", "ratio", "pytorch")
	for _, mc := range []struct {
		name string
		cfg  model.TrainConfig
	}{{"default (4 blocks × dim 128, ctx 64)", defaultModel}, {"dim 512 × 8 blocks, ctx 256", wideModel}} {
		for _, th := range ths {
			a, err := trainRate(mc.cfg, th, steps, false)
			if err != nil {
				return err
			}
			g, err := trainRate(mc.cfg, th, steps, true)
			if err != nil {
				return err
			}
			pt := "skipped"
			if torch {
				pt = torchRate(mc.cfg, th, steps)
			}
			fmt.Printf("%-36s %3d %9.0f %9.0f %5.1fx | %9.0f %9.0f %5.1fx | %9s\n", mc.name, th, a.wall, g.wall, a.wall/g.wall, a.cpu, g.cpu, a.cpu/g.cpu, pt)
		}
	}
	return nil
}

// timeShape returns GFLOP/s of the kernel ([0]) and of gonum ([1]) per
// wall second and per CPU second, alternating short rounds of each until
// both have run for minTime.
func timeShape(s shape, threads int, minTime time.Duration) (wall, cpu [2]float64) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(threads))
	r := rand.New(rand.NewPCG(1, uint64(s.m*s.n+s.k)))
	rows, cols := s.m, s.k
	if s.tA {
		rows, cols = cols, rows
	}
	a := randSlice(r, rows*cols)
	lda := cols
	rows, cols = s.k, s.n
	if s.tB {
		rows, cols = cols, rows
	}
	b := randSlice(r, rows*cols)
	ldb := cols
	c := make([]float32, s.m*s.n)
	ta, tb := blas.NoTrans, blas.NoTrans
	if s.tA {
		ta = blas.Trans
	}
	if s.tB {
		tb = blas.Trans
	}
	impls := []sgemm.Implementation{{Threads: threads}, {PureGo: true}}
	var spent, used [2]time.Duration
	var calls [2]int
	for spent[0] < minTime || spent[1] < minTime {
		for i, im := range impls {
			t0, c0 := time.Now(), cpuTime()
			n := 0
			for time.Since(t0) < minTime/8 || n == 0 {
				im.Sgemm(ta, tb, s.m, s.n, s.k, 1, a, lda, b, ldb, 0, c, s.n)
				n++
			}
			spent[i] += time.Since(t0)
			used[i] += cpuTime() - c0
			calls[i] += n
		}
	}
	fl := 2 * float64(s.m) * float64(s.n) * float64(s.k)
	for i := range wall {
		wall[i] = fl * float64(calls[i]) / spent[i].Seconds() / 1e9
		cpu[i] = fl * float64(calls[i]) / used[i].Seconds() / 1e9
	}
	return wall, cpu
}

// cpuTime is the user+system time of this process so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// trainRate times training steps of cfg on random tokens with the kernel
// (or gonum's pure Go) under blas32, on threads cores.
func trainRate(cfg model.TrainConfig, threads, steps int, pureGo bool) (rate, error) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(threads))
	blas32.Use(sgemm.Implementation{PureGo: pureGo})
	defer blas32.Use(sgemm.Implementation{})
	cfg.Optim = model.OptimConfig{Kind: "adamw", LR: 3e-3, TotalSteps: 1 << 30} // any number of warm-up steps
	tr, err := model.NewTrainer(cfg)
	if err != nil {
		return rate{}, err
	}
	r := rand.New(rand.NewPCG(1, 2))
	sample := func(dst []int32) error {
		for i := range dst {
			dst[i] = int32(r.IntN(256))
		}
		return nil
	}
	step := func() error { _, err := tr.TrainStep(sample); return err }
	// Warm-up: buffers, caches, and the heap's first pages (at least one
	// step; at most two seconds unless the first step takes longer).
	if err := benchwarm.Run(step, 2*time.Second); err != nil {
		return rate{}, err
	}
	t0, c0 := time.Now(), cpuTime()
	for i := 0; i < steps; i++ {
		if err := step(); err != nil {
			return rate{}, err
		}
	}
	tokens := float64(steps * cfg.Microbatches * cfg.MicrobatchSize * cfg.Model.Ctx)
	return rate{tokens / time.Since(t0).Seconds(), tokens / (cpuTime() - c0).Seconds()}, nil
}

// rate is tokens per wall second and per CPU second.
type rate struct{ wall, cpu float64 }

// torchScript is the PyTorch twin of the model (Python lives under
// examples/ and backends/ only).
var torchScript string

// torchRate runs the same model in PyTorch (tokens per wall second), or
// says why not.
func torchRate(cfg model.TrainConfig, threads, steps int) string {
	if _, err := os.Stat(torchScript); err != nil {
		return "skip:no-script"
	}
	c := cfg.Model.WithDefaults()
	cmd := exec.Command("/usr/bin/python3", torchScript,
		strconv.Itoa(c.Layers), strconv.Itoa(c.Dim), strconv.Itoa(c.Heads), strconv.Itoa(c.Ctx), strconv.Itoa(c.Hidden),
		strconv.Itoa(cfg.Microbatches), strconv.Itoa(cfg.MicrobatchSize), strconv.Itoa(steps), strconv.Itoa(threads))
	out, err := cmd.Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) && ee.ExitCode() == 3 {
			return "skip:no-torch"
		}
		fmt.Fprintf(os.Stderr, "pytorch run failed: %v\n", err)
		return "failed"
	}
	v, err := strconv.ParseFloat(strings.TrimSpace(string(out)), 64)
	if err != nil {
		return "failed"
	}
	return fmt.Sprintf("%.0f", v)
}

// cpuInfo reads the model name and clock of the first CPU.
func cpuInfo() (string, float64) {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return "unknown CPU", math.NaN()
	}
	name, mhz := "unknown CPU", math.NaN()
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		switch strings.TrimSpace(k) {
		case "model name":
			if name == "unknown CPU" {
				name = strings.TrimSpace(v)
			}
		case "cpu MHz":
			if math.IsNaN(mhz) {
				mhz, _ = strconv.ParseFloat(strings.TrimSpace(v), 64)
			}
		}
	}
	return name, mhz
}

func ints(flagName, s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		v, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || v < 1 {
			return nil, fmt.Errorf("%s: %q is not a positive integer", flagName, f)
		}
		out = append(out, v)
	}
	return out, nil
}

func randSlice(r *rand.Rand, n int) []float32 {
	s := make([]float32, n)
	for i := range s {
		s[i] = float32(r.NormFloat64())
	}
	return s
}
