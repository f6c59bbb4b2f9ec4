// Command skipfailures trains the same small model with SkipPipe twice on
// the emulated 12-region cluster (the skippipe-geo preset: 20 nodes,
// stages of [5,3,3,3,3,3], links scaled for the model): once undisturbed
// and once with a quarter of the workers outside stage 0 crashing mid-run
// (4 of 15, one at a time, each mid-iteration, none coming back). It
// prints how each crash was survived, the throughput before, during and
// after the failure window beside the undisturbed run's over the same
// steps, the validation loss of both runs, and writes both curves to one
// PNG.
//
//	go run ./bench/skipfailures [-steps 30] [-crash-after 8,11,14,17] [-link-scale 0.05] [-out bench-out/skipfailures]
//
// A crashed worker's gRPC server stops without grace and its lease is left
// to lapse (bench/internal/localrun); the coordinator re-paths the
// microbatches around it. Both runs plan with one cost model calibrated
// from a short GPipe run.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"stagecoach/bench/internal/localrun"
	"stagecoach/coordinator"
	"stagecoach/model"
	"stagecoach/planner"
	"stagecoach/sim"
)

func main() {
	var (
		scale    = flag.Float64("link-scale", 0.05, "emulated hop time over the SkipPipe table's hop time for one microbatch")
		steps    = flag.Int("steps", 30, "optimizer steps per run")
		every    = flag.Int("eval-every", 5, "validation loss every this many steps (from the workers' checkpoints)")
		crashes  = flag.String("crash-after", "8,11,14,17", "crash one worker outside stage 0 during the step after each of these steps")
		margin   = flag.Float64("margin", 0.03, "the final validation loss with crashes may exceed the undisturbed one by at most this fraction")
		out      = flag.String("out", "bench-out/skipfailures", "output directory (runs, loss.png)")
		corpus   = flag.String("corpus", "", "training text (default $(go env GOROOT)/src)")
		maxBytes = flag.Int64("max-bytes", 4<<20, "corpus bytes to load")
		windows  = flag.Int("eval-windows", 256, "validation windows")
		vacate   = flag.Bool("vacate", false, "crash every worker of one stage (stage 3), which then goes vacant (default -crash-after 8,11,14)")
	)
	flag.Parse()
	set := false
	flag.Visit(func(f *flag.Flag) { set = set || f.Name == "crash-after" })
	if *vacate && !set {
		*crashes = "8,11,14"
	}
	after, err := parseSteps(*crashes, *steps)
	if err == nil {
		err = run(*scale, *steps, *every, after, *vacate, *margin, *out, *corpus, *maxBytes, *windows)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "skipfailures:", err)
		os.Exit(1)
	}
}

// parseSteps reads -crash-after: ascending steps in [1, steps-2], so
// every crash has a step to hit and one after it.
func parseSteps(s string, steps int) ([]int64, error) {
	var out []int64
	for _, f := range strings.Split(s, ",") {
		v, err := strconv.ParseInt(strings.TrimSpace(f), 10, 64)
		if err != nil || v < 1 || v > int64(steps-2) || len(out) > 0 && v <= out[len(out)-1] {
			return nil, fmt.Errorf("-crash-after %q: want ascending steps between 1 and %d", s, steps-2)
		}
		out = append(out, v)
	}
	return out, nil
}

// trainConfig is bench/skipvsgpipe's model: compute is a minor share of
// an iteration on two shared cores, as next to intercontinental links.
func trainConfig() model.TrainConfig {
	return model.TrainConfig{Model: model.Config{Layers: 6, Dim: 8, Heads: 2, Ctx: 32, Seed: 1},
		Microbatches: 30, MicrobatchSize: 16}
}

type result struct {
	name     string
	sum      *coordinator.Summary
	val      []float64
	valSteps []float64
	at       map[int64]time.Time // when each step was committed
	crashed  []string
}

// vacatedStage is the stage -vacate empties.
const vacatedStage = 3

func run(scale float64, steps, every int, after []int64, vacate bool, margin float64, out, corpus string, maxBytes int64, windows int) error {
	tc := trainConfig()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Minute)
	defer cancel()
	start := time.Now()
	geo, err := localrun.NewGeo(ctx, tc, scale, out, corpus, maxBytes, windows)
	if err != nil {
		return err
	}
	cl := geo.Cluster
	var res []*result
	for _, faulty := range []bool{false, true} {
		r := &result{name: "undisturbed", at: map[int64]time.Time{}}
		if faulty {
			r.name = fmt.Sprintf("%d crashes", len(after))
		}
		fmt.Fprintf(os.Stderr, "training SkipPipe for %d steps, %s...\n", steps, r.name)
		j := geo.Job("run-"+strings.ReplaceAll(r.name, " ", "-"), planner.SkipPipe, steps, every)
		j.OnStep = func(st coordinator.StepReport) { r.at[st.Step] = time.Now() }
		curve := geo.TrackValidation(&j, every)
		if faulty {
			j.Crash = func(step int64, plan []coordinator.PlanWorker) []string {
				if !slices.Contains(after, step) {
					return nil
				}
				stage := -1
				if vacate {
					stage = vacatedStage
				}
				v := localrun.Victim(plan, r.crashed, stage)
				if v == "" {
					return nil
				}
				r.crashed = append(r.crashed, v)
				fmt.Fprintf(os.Stderr, "  crashing %s during step %d\n", v, step+1)
				return []string{v}
			}
		}
		sum, err := localrun.Run(ctx, j)
		if err != nil {
			return fmt.Errorf("%s: %w", r.name, err)
		}
		if err := curve.Err(); err != nil {
			return fmt.Errorf("%s: %w", r.name, err)
		}
		r.sum, r.val, r.valSteps = sum, curve.Loss, curve.Steps
		res = append(res, r)
	}
	ok, bad := res[0], res[1]
	if len(bad.crashed) != len(after) {
		return fmt.Errorf("crashed %d workers (%v), wanted %d", len(bad.crashed), bad.crashed, len(after))
	}
	plot := filepath.Join(out, "loss.png")
	var series []sim.Series
	for _, r := range res {
		series = append(series, sim.Series{Name: "validation, " + r.name, X: r.valSteps, Y: r.val})
	}
	for _, r := range res {
		var x, y []float64
		for _, st := range r.sum.Steps {
			x, y = append(x, float64(st.Step)), append(y, st.Loss)
		}
		series = append(series, sim.Series{Name: "training, " + r.name, X: x, Y: y})
	}
	title := fmt.Sprintf("SkipPipe, %s emulated: %d of 15 workers outside stage 0 crash (steps %s)", cl.Name, len(after), joinSteps(plusOne(after)))
	if vacate {
		title = fmt.Sprintf("SkipPipe, %s emulated: stage %d loses all %d workers (steps %s) and goes vacant", cl.Name, vacatedStage, len(after), joinSteps(plusOne(after)))
	}
	if err := sim.WriteLinePlot(plot, title, "step", "loss (nats/byte)", series); err != nil {
		return err
	}

	fmt.Printf("cluster %s: 20 nodes in 12 regions, stages [5,3,3,3,3,3], %d microbatches x %d; model %d layers dim %d ctx %d; %d steps each\n",
		cl.Name, tc.Microbatches, tc.MicrobatchSize, tc.Model.Layers, tc.Model.Dim, tc.Model.Ctx, steps)
	fmt.Printf("crashed %v (one each during steps %v)\n", bad.crashed, plusOne(after))
	for _, rec := range bad.sum.Recoveries {
		fmt.Printf("  step %d: %s around %v in %.3f s (first commit %.3f s after detection), epoch %d on %d workers\n",
			rec.Step, rec.Kind, rec.Lost, rec.RecoveryS, rec.ToCommitS, rec.Epoch, rec.Workers)
	}
	// Throughput by phase, from commit times: the failure window runs from
	// the commit before the first crashed step to the commit of the step
	// after the last crashed one.
	tokens := float64(tc.Microbatches * tc.MicrobatchSize * tc.Model.Ctx)
	first, last := after[0], after[len(after)-1]+2
	phases := []struct {
		name     string
		from, to int64
	}{{"before (warm)", 1, first}, {"failure window", first, last}, {"after", last, int64(steps)}}
	fmt.Printf("%-16s %-10s %14s %14s %9s\n", "phase", "steps", "undisturbed", "with crashes", "ratio")
	for _, p := range phases {
		if p.to <= p.from {
			continue
		}
		tOK, tBad := rate(ok.at, p.from, p.to, tokens), rate(bad.at, p.from, p.to, tokens)
		fmt.Printf("%-16s %-10s %10.0f t/s %10.0f t/s %9.2f\n", p.name, fmt.Sprintf("%d-%d", p.from+1, p.to), tOK, tBad, tBad/tOK)
	}
	fmt.Printf("program span (median): undisturbed %.3f s, with crashes %.3f s (%d workers at the end)\n",
		ok.sum.MeasuredSpanS, bad.sum.MeasuredSpanS, bad.sum.Workers)
	fmt.Printf("validation loss by step (undisturbed / with crashes):")
	for i := range ok.val {
		if i < len(bad.val) {
			fmt.Printf(" %d: %.4f/%.4f", int(ok.valSteps[i]), ok.val[i], bad.val[i])
		}
	}
	fmt.Println()
	gl, bl := ok.val[len(ok.val)-1], bad.val[len(bad.val)-1]
	rel := (bl - gl) / gl
	verdict := "PASS"
	if rel > margin || bl >= bad.val[0] {
		verdict = "FAIL"
	}
	fmt.Printf("validation loss after %d steps: with crashes %.4f vs undisturbed %.4f (%+.2f%%; first point %.4f); margin %.1f%%: %s\n",
		steps, bl, gl, 100*rel, bad.val[0], 100*margin, verdict)
	fmt.Printf("wrote %s (%.0f s in all)\n", plot, time.Since(start).Seconds())
	return nil
}

// rate is tokens per second over the commits after step from up to step
// to, by wall clock (failed attempts and recoveries included).
func rate(at map[int64]time.Time, from, to int64, tokens float64) float64 {
	a, okA := at[from]
	b, okB := at[to]
	if !okA || !okB || !b.After(a) {
		return 0
	}
	return float64(to-from) * tokens / b.Sub(a).Seconds()
}

func plusOne(s []int64) []int64 {
	out := make([]int64, len(s))
	for i, v := range s {
		out[i] = v + 1
	}
	return out
}

func joinSteps(s []int64) string {
	var parts []string
	for _, v := range s {
		parts = append(parts, strconv.FormatInt(v, 10))
	}
	return strings.Join(parts, ", ")
}
