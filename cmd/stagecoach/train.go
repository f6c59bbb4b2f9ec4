package main

import (
	"encoding/json"
	"fmt"
	"os"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"

	"stagecoach/compute/reference"
	"stagecoach/data"
	"stagecoach/internal/sgemm"
	"stagecoach/model"
	"stagecoach/model/train"
)

func init() { rootCmd.AddCommand(newTrainCmd()) }

func newTrainCmd() *cobra.Command {
	var (
		o         train.Options
		cfg       model.TrainConfig
		lr        float64
		optimizer string
		asJSON    bool
		backend   backendFlags
	)
	cmd := &cobra.Command{
		Use:   "train",
		Short: "Train the reference transformer in one process (no etcd, no gRPC)",
		Long: `Train the byte-level reference transformer in one process: the result every
distributed run is checked against. The corpus is any directory of text files;
by default the Go source tree that ships with the toolchain,
$(go env GOROOT)/src, which every machine with Go has.
Writes model.safetensors, shard-*.safetensors and loss.png into --out.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if optimizer != "adamw" && optimizer != "lamb" {
				return badInput("--optimizer must be adamw or lamb, got %q", optimizer)
			}
			if lr < 0 {
				return badInput("--lr must not be negative")
			}
			if o.Steps < 1 || cfg.Microbatches < 1 || cfg.MicrobatchSize < 1 {
				return badInput("--steps, --microbatches and --microbatch-size must be positive")
			}
			cfg.Model = cfg.Model.WithDefaults()
			if err := cfg.Model.Validate(); err != nil {
				return badInput("%v", err)
			}
			cfg.Optim = model.OptimConfig{Kind: optimizer, LR: lr}
			o.Train = cfg
			compute := "gemm " + sgemm.Kernel()
			if backend.cmd != "" || backend.addr != "" {
				// The single-process reference of a backend: the same
				// steps through the compute protocol, one process.
				be, err := backend.open(cmd.Context(), model.Limits{}, os.Stderr, nil)
				if err != nil {
					return err
				}
				defer be.Close()
				compute = "backend " + be.Name()
				o.NewEngine = func(tc model.TrainConfig) (train.Engine, error) {
					return reference.New(cmd.Context(), be, tc)
				}
			}
			setup, err := train.Prepare(o)
			if err != nil {
				return err
			}
			tr := setup.Engine
			mc := setup.Opts.Train.Model
			fmt.Fprintf(os.Stderr, "model: %d params (%d layers, dim %d, %d heads, ctx %d; %s); corpus %s: %d train / %d val bytes\n",
				tr.NumParams(), mc.Layers, mc.Dim, mc.Heads, mc.Ctx, compute,
				setup.Opts.CorpusDir, len(setup.Corpus.Train), len(setup.Corpus.Val))
			var bar *progressbar.ProgressBar
			if stderrIsTTY() {
				bar = progressbar.NewOptions(o.Steps,
					progressbar.OptionSetWriter(os.Stderr),
					progressbar.OptionShowCount(),
					progressbar.OptionSetPredictTime(true),
					progressbar.OptionThrottle(100*time.Millisecond),
					progressbar.OptionSetDescription("train"))
				_ = bar.Set(tr.Steps())
			}
			enc := json.NewEncoder(os.Stdout)
			res, err := setup.Run(func(ev train.Event) {
				if asJSON {
					_ = enc.Encode(ev)
				}
				if bar != nil {
					bar.Describe(fmt.Sprintf("loss %.4f  %.0f tok/s", ev.Loss, ev.TokensPerS))
					_ = bar.Add(1)
				}
			})
			if bar != nil {
				_ = bar.Finish()
				fmt.Fprintln(os.Stderr)
			}
			if err != nil {
				return err
			}
			summary := fmt.Sprintf("val loss %.4f nats/byte (perplexity %.3f), unigram baseline %.4f; %.0f tokens/s; checkpoint %s, plot %s",
				res.FinalValLoss, expf(res.FinalValLoss), res.UnigramEntropy, res.TokensPerS, res.Checkpoint, res.Plot)
			if asJSON {
				fmt.Fprintln(os.Stderr, summary)
			} else {
				fmt.Println(summary)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.IntVar(&cfg.Model.Layers, "layers", 4, "transformer blocks")
	f.IntVar(&cfg.Model.Dim, "dim", 128, "model width")
	f.IntVar(&cfg.Model.Heads, "heads", 4, "attention heads (must divide --dim)")
	f.IntVar(&cfg.Model.Ctx, "ctx", 64, "context length in bytes")
	f.IntVar(&cfg.Microbatches, "microbatches", 4, "microbatches per optimizer step")
	f.IntVar(&cfg.MicrobatchSize, "microbatch-size", 8, "sequences per microbatch")
	f.IntVar(&o.Steps, "steps", 300, "optimizer steps (total, including resumed ones)")
	f.Uint64Var(&cfg.Model.Seed, "seed", 1, "seed for initialisation and data order")
	f.Float64Var(&lr, "lr", 0, "peak learning rate (0: 3e-3 for adamw, 3e-2 for lamb)")
	f.StringVar(&optimizer, "optimizer", "adamw", "adamw or lamb")
	f.StringVar(&o.CorpusDir, "corpus", "", "directory of text files (default $(go env GOROOT)/src)")
	f.Int64Var(&o.MaxBytes, "max-bytes", data.DefaultMaxBytes, "load at most this many bytes of the corpus")
	f.StringVar(&o.OutDir, "out", "run", "directory for checkpoint and loss.png")
	f.StringVar(&o.Resume, "resume", "", "continue exactly from this checkpoint directory (model flags are taken from it)")
	f.IntVar(&o.StopAt, "stop-at", 0, "stop and checkpoint after this step; --resume later continues exactly (keep --steps)")
	f.IntVar(&o.EvalEvery, "eval-every", 0, "validation every N steps (0: steps/10)")
	f.IntVar(&o.EvalWindows, "eval-windows", 128, "validation windows")
	f.IntVar(&cfg.Stages, "stages", 1, "split the model into this many in-process shards (same result)")
	f.BoolVar(&asJSON, "json", false, "print one JSON object per step on stdout")
	backend.register(f)
	return cmd
}

// stderrIsTTY reports whether stderr is a character device (a terminal,
// not a pipe or file): the progress bar only goes to terminals.
func stderrIsTTY() bool {
	st, err := os.Stderr.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}
