// Command memory sets the simulator's memory prediction beside what real
// workers hold: it runs `stagecoach up` (one process per worker, the
// built-in Go model) with --memory-probe for each schedule, reads every
// worker's per-iteration peak live heap over its baseline before the
// model loaded (from the worker logs, iterations after the first, which
// allocates the optimizer's moments), and simulates the same plan shape
// with the same model in bytes. It prints, per schedule and stage, the
// simulated and the measured peak and their ratio.
//
//	go run ./bench/memory [-schedules gpipe,1f1b,zb-h1] [-stages 4] [-layers 4] [-dim 128] [-ctx 64] [-microbatches 8] [-steps 4] [-out bench-out/memory]
//
// The measured heap holds everything a worker process keeps (received
// tensors not yet consumed, the matrix kernel's packing buffers, gRPC's
// buffers); the simulator counts parameters, gradients, optimizer state,
// the model's workspace and the activations of the microbatches in flight.
package main

import (
	"bufio"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"

	"stagecoach/scheduler"
	"stagecoach/sim"
)

func main() {
	var (
		schedules    = flag.String("schedules", "gpipe,1f1b,zb-h1", "comma-separated schedules")
		stages       = flag.Int("stages", 4, "pipeline stages, one worker each")
		layers       = flag.Int("layers", 4, "transformer blocks")
		dim          = flag.Int("dim", 128, "model width")
		ctx          = flag.Int("ctx", 64, "context length")
		microbatches = flag.Int("microbatches", 8, "microbatches per step")
		samples      = flag.Int("microbatch-size", 8, "sequences per microbatch")
		steps        = flag.Int("steps", 4, "steps per run (the first is left out)")
		out          = flag.String("out", "bench-out/memory", "output directory")
	)
	flag.Parse()
	shape := shape{stages: *stages, layers: *layers, dim: *dim, ctx: *ctx, microbatches: *microbatches, samples: *samples}
	if err := run(strings.Split(*schedules, ","), shape, *steps, *out); err != nil {
		fmt.Fprintln(os.Stderr, "memory:", err)
		os.Exit(1)
	}
}

// shape is the job both the runs and the simulations use: stagecoach
// up's default model (4 heads, vocab 256, AdamW) at this size.
type shape struct{ stages, layers, dim, ctx, microbatches, samples int }

func run(schedules []string, sh shape, steps int, out string) error {
	if steps < 2 {
		return fmt.Errorf("-steps %d: need at least 2 (the first is left out)", steps)
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	bin, err := filepath.Abs(filepath.Join(out, "stagecoach"))
	if err != nil {
		return err
	}
	build := exec.Command("go", "build", "-o", bin, "./cmd/stagecoach")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		return fmt.Errorf("build stagecoach (run from the repository root): %w", err)
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "schedule\tstage\tsimulated_MiB\tmeasured_MiB\tmeasured/simulated\t")
	for _, name := range schedules {
		simulated, err := simulate(name, sh)
		if err != nil {
			return err
		}
		dir := filepath.Join(out, name)
		measured, err := measure(bin, dir, name, sh, steps)
		if err != nil {
			return err
		}
		for s := range sh.stages {
			m, ok := measured[s]
			if !ok {
				return fmt.Errorf("%s: no worker of stage %d logged a heap peak (see %s/workers)", name, s, dir)
			}
			fmt.Fprintf(tw, "%s\t%d\t%.2f\t%.2f\t%.3f\t\n", name, s, simulated[s]/(1<<20), m/(1<<20), m/simulated[s])
		}
	}
	return tw.Flush()
}

// simulate returns the simulator's peak bytes per stage (one worker each)
// for the schedule on the model `stagecoach up` trains by default.
func simulate(name string, sh shape) ([]float64, error) {
	p, err := scheduler.Generate(name, scheduler.Spec{Stages: sh.stages, Microbatches: sh.microbatches, Layers: sh.layers, Samples: sh.samples})
	if err != nil {
		return nil, err
	}
	c := sim.Homogeneous()
	m := sim.DefaultModelMemory()
	m.Dim, m.Hidden, m.Ctx = sh.dim, 4*sh.dim, sh.ctx
	c.Model = &m
	r, err := sim.Run(p, c, sim.Options{})
	if err != nil {
		return nil, err
	}
	peaks := make([]float64, sh.stages)
	for _, w := range r.PerWorker {
		for _, s := range p.Workers[w.Worker].Stages {
			peaks[s] = max(peaks[s], w.PeakBytes)
		}
	}
	return peaks, nil
}

var peakLine = regexp.MustCompile(`iteration (\d+): live heap peak (\d+) bytes .* after \S*@s(\d+)`)

// measure runs up with the memory probe and returns the largest peak each
// stage's worker logged after the first iteration.
func measure(bin, dir, name string, sh shape, steps int) (map[int]float64, error) {
	if err := os.RemoveAll(dir); err != nil {
		return nil, err
	}
	c := exec.Command(bin, "up", "--workers", strconv.Itoa(sh.stages), "--stages", strconv.Itoa(sh.stages), "--schedule", name,
		"--layers", strconv.Itoa(sh.layers), "--dim", strconv.Itoa(sh.dim), "--ctx", strconv.Itoa(sh.ctx),
		"--microbatches", strconv.Itoa(sh.microbatches), "--microbatch-size", strconv.Itoa(sh.samples),
		"--steps", strconv.Itoa(steps), "--memory-probe", "--out", dir)
	c.Stdout, c.Stderr = os.Stderr, os.Stderr
	fmt.Fprintln(os.Stderr, "memory:", strings.Join(c.Args, " "))
	if err := c.Run(); err != nil {
		return nil, fmt.Errorf("%s: %w", strings.Join(c.Args, " "), err)
	}
	logs, err := filepath.Glob(filepath.Join(dir, "workers", "*.log"))
	if err != nil {
		return nil, err
	}
	sort.Strings(logs)
	peaks := map[int]float64{}
	for _, path := range logs {
		f, err := os.Open(path)
		if err != nil {
			return nil, err
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			m := peakLine.FindStringSubmatch(sc.Text())
			if m == nil {
				continue
			}
			it, _ := strconv.Atoi(m[1])
			bytes, _ := strconv.ParseFloat(m[2], 64)
			stage, _ := strconv.Atoi(m[3])
			if it >= 2 {
				peaks[stage] = max(peaks[stage], bytes)
			}
		}
		f.Close()
		if err := sc.Err(); err != nil {
			return nil, err
		}
	}
	return peaks, nil
}
