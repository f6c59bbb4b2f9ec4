package main

import (
	"bytes"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"stagecoach/planner"
	"stagecoach/scheduler"
	"stagecoach/scheduler/pytorchcsv"
	"stagecoach/sim"
)

func init() { rootCmd.AddCommand(newPlanCmd()) }

type planFlags struct {
	schedule     string
	stages       int
	microbatches int
	replicas     int
	chunks       int
	layers       int
	samples      int
	memory       int
	recompute    bool
	format       string
	dialect      string
	mapping      string
	check        string
	memoryGiB    float64
	model        sim.ModelMemory
}

func newPlanCmd() *cobra.Command {
	var f planFlags
	cmd := &cobra.Command{
		Use:   "plan",
		Short: "Write a schedule's plan (JSON or PyTorch CSV), or check a plan file",
		Long: `Generate the plan of a schedule and write it to standard output, as the
documented Plan JSON (default) or as PyTorch's per-rank action CSV
(--format pytorch-csv, token dialect --dialect new|old).

With --check FILE, read a plan instead (JSON, or a PyTorch CSV, told apart by
the file's extension or content), validate it and print a one-line verdict;
an invalid plan exits with status 2 and the validation error.

Schedules: ` + strings.Join(scheduler.Names(), ", ") + ` (the SkipPipe ones, ` + strings.Join(planner.SkipPipeNames(), ", ") + `, need a cluster: see sim and up).`,
		Example: `  stagecoach plan --schedule 1f1b --stages 4 --microbatches 8 > plan.json
  stagecoach plan --schedule interleaved --stages 4 --chunks 2 --microbatches 8 --format pytorch-csv > plan.csv
  stagecoach plan --check plan.json
  stagecoach plan --check schedule.csv --dialect old --mapping v`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runPlan(cmd, &f) },
	}
	fs := cmd.Flags()
	fs.StringVar(&f.schedule, "schedule", "1f1b", "schedule to generate")
	fs.IntVar(&f.stages, "stages", 4, "pipeline depth p (ranks)")
	fs.IntVar(&f.microbatches, "microbatches", 8, "microbatches per iteration m")
	fs.IntVar(&f.replicas, "replicas", 1, "data-parallel replicas of each stage")
	fs.IntVar(&f.chunks, "chunks", 0, "model chunks per worker for the looped schedules interleaved, interleaved-zb and looped-bfs (0: their default, 2; the V schedules hold 2)")
	fs.IntVar(&f.layers, "layers", 0, "model layers (0: one per stage)")
	fs.IntVar(&f.samples, "samples", 1, "samples per microbatch")
	fs.IntVar(&f.memory, "memory", 0, "activation memory per worker in microbatches (0: unbounded)")
	fs.BoolVar(&f.recompute, "recompute", false, "recompute activations in the backward pass")
	fs.StringVar(&f.format, "format", "json", "output format: json or pytorch-csv")
	fs.StringVar(&f.dialect, "dialect", "", "PyTorch token dialect: new or old (default new; auto-detected with --check)")
	fs.StringVar(&f.mapping, "mapping", "loop", "with --check on a CSV, stage-to-rank mapping: loop, v or infer")
	fs.StringVar(&f.check, "check", "", "validate this plan file (JSON or PyTorch CSV) instead of generating one")
	fs.Float64Var(&f.memoryGiB, "memory-gib", 0, "refuse a plan any of whose workers needs more device memory than this, in GiB, counted in bytes for the model below (0: no check)")
	registerModelMemoryFlags(fs, &f.model, "")
	return cmd
}

func runPlan(cmd *cobra.Command, f *planFlags) error {
	dialect, err := pytorchcsv.ParseDialect(f.dialect)
	if err != nil {
		return badInput("--dialect: %v", err)
	}
	if f.check != "" {
		mapping, err := pytorchcsv.ParseStageMapping(f.mapping)
		if err != nil {
			return badInput("--mapping: %v", err)
		}
		return checkPlanFile(cmd.OutOrStdout(), f.check, dialect, mapping, f)
	}
	format := strings.ToLower(f.format)
	if format != "json" && format != "pytorch-csv" {
		return badInput("--format is %q, want json or pytorch-csv", f.format)
	}
	if format == "json" && f.dialect != "" {
		return badInput("--dialect applies to --format pytorch-csv")
	}
	fam, err := planner.Lookup(f.schedule)
	if err != nil {
		return badInput("%v", err)
	}
	if fam.NeedsCluster {
		return badInput("schedule %s plans paths over a cluster's nodes and links, which `stagecoach plan` does not take: "+
			"simulate it with `stagecoach sim --preset skippipe-geo --schedule %s` (or --cluster FILE), or train with `stagecoach up --schedule %s`",
			f.schedule, f.schedule, f.schedule)
	}
	plan, err := planner.Plan(planner.Snapshot{Schedule: f.schedule, Rules: planner.Rules{
		Stages: f.stages, Microbatches: f.microbatches, Replicas: f.replicas, Chunks: f.chunks,
		Layers: f.layers, Samples: f.samples, Memory: f.memory, Recompute: f.recompute,
	}})
	if err != nil {
		return badInput("%v", err)
	}
	if err := scheduler.Validate(plan); err != nil {
		// A generator bug, not the user's fault.
		return fmt.Errorf("schedule %s produced an invalid plan: %w", f.schedule, err)
	}
	if err := checkPlanMemory(plan, f, ""); err != nil {
		return err
	}
	var out bytes.Buffer
	if format == "json" {
		err = scheduler.Encode(&out, plan)
	} else {
		if dialect == pytorchcsv.DialectAuto {
			dialect = pytorchcsv.DialectNew
		}
		err = pytorchcsv.Export(&out, plan, dialect)
		if err != nil {
			return badInput("%v", err)
		}
	}
	if err != nil {
		return err
	}
	_, err = cmd.OutOrStdout().Write(out.Bytes())
	return err
}

// checkPlanFile validates a JSON or PyTorch CSV plan and prints a verdict.
func checkPlanFile(w io.Writer, path string, dialect pytorchcsv.Dialect, mapping pytorchcsv.StageMapping, f *planFlags) error {
	plan, kind, err := readAnyPlan(path, dialect, mapping)
	if err != nil {
		return err
	}
	if err := checkPlanMemory(plan, f, path+": "); err != nil {
		return err
	}
	fmt.Fprintf(w, "ok: %s: valid %s plan %q: %d workers, %d stages, %d microbatches, %d actions\n",
		path, kind, plan.Schedule, len(plan.Workers), len(plan.Stages), len(plan.Microbatches), plan.TotalActions())
	return nil
}

// checkPlanMemory validates the plan's memory in bytes against
// --memory-gib on every worker (nothing without it); where prefixes the
// plan's own errors.
func checkPlanMemory(p *scheduler.Plan, f *planFlags, where string) error {
	if f.memoryGiB < 0 || math.IsNaN(f.memoryGiB) || math.IsInf(f.memoryGiB, 0) {
		return badInput("--memory-gib is %v, want a finite number >= 0", f.memoryGiB)
	}
	m := sim.ModelMemory{}
	if err := overrideModelMemory(&m, f.model); err != nil {
		return err
	}
	c := &sim.Cluster{Name: "--dim/--heads/--ctx/--vocab/--hidden", AnyNode: true, Model: &m}
	if err := c.Validate(); err != nil {
		return badInput("%v", err)
	}
	if f.memoryGiB == 0 {
		return nil
	}
	stages, err := sim.StageMemories(p, c)
	if err != nil {
		return badInput("%s%v", where, err)
	}
	capacity := make([]float64, len(p.Workers))
	for w := range capacity {
		capacity[w] = f.memoryGiB * (1 << 30)
	}
	if err := scheduler.ValidateMemory(p, stages, capacity); err != nil {
		return badInput("%s%v", where, err)
	}
	return nil
}

// readAnyPlan reads a plan file as JSON or as a PyTorch CSV: by extension
// (.json, .csv), else by content (a JSON plan starts with '{'). Errors are
// bad input.
func readAnyPlan(path string, dialect pytorchcsv.Dialect, mapping pytorchcsv.StageMapping) (*scheduler.Plan, string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, "", badInput("%v", err)
	}
	defer f.Close()
	// Never more than the larger of the two decoders' bounds, plus one
	// byte so that they see the file is too large.
	data, err := io.ReadAll(io.LimitReader(f, max(scheduler.MaxPlanBytes, pytorchcsv.MaxBytes)+1))
	if err != nil {
		return nil, "", badInput("%s: %v", path, err)
	}
	isJSON := strings.HasPrefix(strings.TrimSpace(string(data)), "{")
	switch strings.ToLower(filepath.Ext(path)) {
	case ".json":
		isJSON = true
	case ".csv":
		isJSON = false
	}
	if isJSON {
		plan, err := scheduler.Decode(bytes.NewReader(data))
		if err != nil {
			return nil, "", badInput("%s: %v", path, err)
		}
		return plan, "JSON", nil
	}
	name := strings.TrimSuffix(filepath.Base(path), filepath.Ext(path))
	plan, err := pytorchcsv.Import(bytes.NewReader(data), pytorchcsv.Options{Dialect: dialect, Mapping: mapping, Name: name})
	if err != nil {
		return nil, "", badInput("%s: %v", path, err)
	}
	return plan, "PyTorch CSV", nil
}
