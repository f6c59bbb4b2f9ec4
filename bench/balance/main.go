// Command balance measures balanced stages on a cluster with one node at
// half speed: `stagecoach up` trains the same job on loopback, the
// workers emulating the cluster's node speeds (up --emulate-speed), on
// the even split and with --balance planning from the cost model
// calibrated by the first even run (--costs), -repeat times each,
// alternating. `stagecoach sim` simulates the first run's plan with that
// calibration, without and with --balance. It prints the simulated and
// the measured improvement of the iteration (the workers' program span,
// and the coordinator's wall time per step; medians over the runs) side
// by side, and their ratio.
//
//	go run ./bench/balance [-workers 4] [-schedule gpipe] [-layers 12] [-microbatches 8] [-steps 8] [-repeat 3] [-scale 0.25] [-out bench-out/balance]
//
// Every node is emulated at -scale of this machine's speed and the slow
// one at half that: the emulation times the built-in backend's actions
// by CPU time and waits out the rest, so four workers on a shared
// two-core machine each behave as a machine of their own. Every number comes
// from one invocation on one machine: compare ratios, not times, across
// machines.
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"

	"stagecoach/scheduler"
)

type options struct {
	bin, out, schedule, corpus string
	workers, slow, layers, mbs int
	steps, repeat              int
	scale                      float64
}

func main() {
	var o options
	flag.StringVar(&o.bin, "stagecoach", "", "stagecoach binary (default: go build ./cmd/stagecoach into -out)")
	flag.StringVar(&o.out, "out", "bench-out/balance", "output directory (cluster.yaml, the two runs)")
	flag.StringVar(&o.schedule, "schedule", "gpipe", "schedule of both runs")
	flag.StringVar(&o.corpus, "corpus", "", "training text (default $(go env GOROOT)/src)")
	flag.IntVar(&o.workers, "workers", 4, "workers, one stage each")
	flag.IntVar(&o.slow, "slow", 1, "the half-speed node's index")
	flag.IntVar(&o.layers, "layers", 12, "model layers")
	flag.IntVar(&o.mbs, "microbatches", 8, "microbatches per step")
	flag.IntVar(&o.steps, "steps", 8, "steps per run (the first is warm-up)")
	flag.IntVar(&o.repeat, "repeat", 3, "runs of each split, alternating")
	flag.Float64Var(&o.scale, "scale", 0.25, "emulated speed of the fast nodes, as a fraction of this machine's (the slow node: half of it)")
	flag.Parse()
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "balance:", err)
		os.Exit(1)
	}
}

// summary is what the bench reads of an up run's summary.json.
type summary struct {
	MeasuredSpanS  float64 `json:"measured_span_s"`
	MeanIterationS float64 `json:"mean_iteration_s"`
	SimulatedSpanS float64 `json:"simulated_span_s"`
	PlanPath       string  `json:"plan_path"`
	Steps          []struct {
		Loss float64 `json:"loss"`
	} `json:"steps"`
}

func run(o options) error {
	switch {
	case o.workers < 2 || o.slow < 0 || o.slow >= o.workers:
		return fmt.Errorf("need -workers >= 2 and -slow in 0..%d", o.workers-1)
	case !(o.scale > 0 && o.scale <= 1):
		return fmt.Errorf("-scale %v: want a fraction in (0, 1]", o.scale)
	case o.steps < 2 || o.repeat < 1:
		return errors.New("need -steps >= 2 (the first is warm-up) and -repeat >= 1")
	}
	if err := os.MkdirAll(o.out, 0o755); err != nil {
		return err
	}
	if o.bin == "" {
		o.bin = filepath.Join(o.out, "stagecoach")
		if err := cmd("go", "build", "-o", o.bin, "./cmd/stagecoach").Run(); err != nil {
			return fmt.Errorf("build stagecoach (run from the repository root, or give -stagecoach): %w", err)
		}
	}
	cluster := filepath.Join(o.out, "cluster.yaml")
	if err := os.WriteFile(cluster, []byte(clusterYAML(o)), 0o644); err != nil {
		return err
	}
	job := []string{"--cluster", cluster, "--emulate-speed", "--schedule", o.schedule, "--workers", strconv.Itoa(o.workers),
		"--layers", strconv.Itoa(o.layers), "--microbatches", strconv.Itoa(o.mbs), "--steps", strconv.Itoa(o.steps), "--force"}
	if o.corpus != "" {
		job = append(job, "--corpus", o.corpus)
	}
	evenDir := filepath.Join(o.out, "even")
	even, err := up(o.bin, evenDir, job)
	if err != nil {
		return err
	}
	calib := filepath.Join(evenDir, "calibration.yaml")
	simEven, _, err := simulate(o.bin, even.PlanPath, calib, false)
	if err != nil {
		return err
	}
	simBal, verdict, err := simulate(o.bin, even.PlanPath, calib, true)
	if err != nil {
		return err
	}
	// The runs alternate, even and balanced, so that a busy spell of the
	// machine weighs on both; each side's median counts.
	evens, bals := []*summary{even}, []*summary{}
	for i := range o.repeat {
		if i > 0 {
			s, err := up(o.bin, filepath.Join(o.out, fmt.Sprintf("even-%d", i+1)), job)
			if err != nil {
				return err
			}
			evens = append(evens, s)
		}
		s, err := up(o.bin, filepath.Join(o.out, fmt.Sprintf("balanced-%d", i+1)), append(job, "--balance", "--costs", calib))
		if err != nil {
			return err
		}
		bals = append(bals, s)
	}
	bal := bals[0]
	layersEven, err := planLayers(even.PlanPath)
	if err != nil {
		return err
	}
	layersBal, err := planLayers(bal.PlanPath)
	if err != nil {
		return err
	}
	same := len(even.Steps) == len(bal.Steps)
	for i := range even.Steps {
		same = same && even.Steps[i].Loss == bal.Steps[i].Loss
	}
	span := func(s *summary) float64 { return s.MeasuredSpanS }
	wall := func(s *summary) float64 { return s.MeanIterationS }
	evenSpan, balSpan := median(evens, span), median(bals, span)
	evenWall, balWall := median(evens, wall), median(bals, wall)

	gain := func(a, b float64) float64 { return 1 - b/a }
	simGain := gain(simEven, simBal)
	spanGain := gain(evenSpan, balSpan)
	wallGain := gain(evenWall, balWall)
	fmt.Printf("cluster %s: %d nodes at %g of this machine's speed, node n%d at %g; %s, %d layers, %d microbatches, %d steps per run, %d runs of each split (medians)\n",
		cluster, o.workers, o.scale, o.slow, o.scale/2, o.schedule, o.layers, o.mbs, o.steps, o.repeat)
	for i := range evens {
		fmt.Printf("  run %d: span even %.3f s, balanced %.3f s\n", i+1, evens[i].MeasuredSpanS, bals[i].MeasuredSpanS)
	}
	fmt.Printf("simulated with %s (calibrated by the even run): %s\n", calib, strings.TrimSpace(verdict))
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "\tlayers per stage\tsimulated s\tmeasured span s\tmeasured step s\t")
	fmt.Fprintf(tw, "even\t%s\t%.3f\t%.3f\t%.3f\t\n", join(layersEven), simEven, evenSpan, evenWall)
	fmt.Fprintf(tw, "--balance\t%s\t%.3f\t%.3f\t%.3f\t\n", join(layersBal), simBal, balSpan, balWall)
	fmt.Fprintf(tw, "improvement\t\t%.1f%%\t%.1f%%\t%.1f%%\t\n", 100*simGain, 100*spanGain, 100*wallGain)
	fmt.Fprintf(tw, "measured / simulated improvement\t\t\t%.2f\t%.2f\t\n", spanGain/simGain, wallGain/simGain)
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Printf("losses of both runs bit-identical: %v\n", same)
	fmt.Printf("targets: simulated improvement >= 20%%: %v; measured (span) within 10%% of simulated: %v\n",
		simGain >= 0.2, spanGain/simGain >= 0.9 && spanGain/simGain <= 1.1)
	return nil
}

// clusterYAML is o's cluster: every node on one region (free links), the
// fast ones at o.scale, node o.slow at half of it. The nominal compute
// matters only to the first run's plan (the even split).
func clusterYAML(o options) string {
	var b strings.Builder
	fmt.Fprintf(&b, "name: one-node-at-half-speed\ncompute:\n  layer_forward_s: 0.01\n  backward_ratio: 2\n  loss_layers: 1\n")
	fmt.Fprintf(&b, "  activation_bytes_per_sample: 0\n  gradient_bytes_per_layer: 0\nnodes:\n")
	for i := range o.workers {
		sp := o.scale
		if i == o.slow {
			sp /= 2
		}
		fmt.Fprintf(&b, "  - {name: n%d, speed: %g}\n", i, sp)
	}
	return b.String()
}

// up runs `stagecoach up` into dir (its output in dir.log) and reads its
// summary.
func up(bin, dir string, args []string) (*summary, error) {
	log, err := os.Create(dir + ".log")
	if err != nil {
		return nil, err
	}
	defer log.Close()
	c := cmd(bin, append([]string{"up", "--out", dir}, args...)...)
	c.Stdout, c.Stderr = log, log
	fmt.Fprintf(os.Stderr, "%s\n", strings.Join(c.Args, " "))
	if err := c.Run(); err != nil {
		return nil, fmt.Errorf("stagecoach up (log %s.log): %w", dir, err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "summary.json"))
	if err != nil {
		return nil, err
	}
	var s summary
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("%s/summary.json: %w", dir, err)
	}
	return &s, nil
}

// simulate runs `stagecoach sim --plan plan --cluster costs` (with
// --balance when balance) and returns the iteration time and, with
// --balance, its verdict line.
func simulate(bin, plan, costs string, balance bool) (float64, string, error) {
	args := []string{"sim", "--plan", plan, "--cluster", costs, "--json"}
	if balance {
		args = append(args, "--balance")
	}
	c := cmd(bin, args...)
	var stderr strings.Builder
	c.Stderr = &stderr
	fmt.Fprintf(os.Stderr, "%s\n", strings.Join(c.Args, " "))
	out, err := c.Output()
	if err != nil {
		return 0, "", fmt.Errorf("stagecoach sim: %w: %s", err, stderr.String())
	}
	var rows []struct {
		IterationTimeS float64 `json:"iteration_time_s"`
	}
	if err := json.Unmarshal(out, &rows); err != nil || len(rows) != 1 {
		return 0, "", fmt.Errorf("stagecoach sim: %d rows (%v)", len(rows), err)
	}
	return rows[0].IterationTimeS, stderr.String(), nil
}

func planLayers(path string) ([]int, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	p, err := scheduler.Decode(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	out := make([]int, len(p.Stages))
	for i, s := range p.Stages {
		out[i] = s.Layers
	}
	return out, nil
}

// median is the median of f over runs.
func median(runs []*summary, f func(*summary) float64) float64 {
	xs := make([]float64, len(runs))
	for i, r := range runs {
		xs[i] = f(r)
	}
	sort.Float64s(xs)
	if n := len(xs); n%2 == 0 {
		return (xs[n/2-1] + xs[n/2]) / 2
	}
	return xs[len(xs)/2]
}

func join(xs []int) string {
	s := make([]string, len(xs))
	for i, x := range xs {
		s[i] = strconv.Itoa(x)
	}
	return strings.Join(s, ",")
}

func cmd(name string, args ...string) *exec.Cmd {
	c := exec.Command(name, args...)
	c.Stderr = os.Stderr
	return c
}
