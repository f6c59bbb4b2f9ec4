package main

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"stagecoach/data"
	"stagecoach/model"
	"stagecoach/model/train"
)

func init() { rootCmd.AddCommand(newEvalCmd()) }

func newEvalCmd() *cobra.Command {
	var (
		ckpt, skipList, corpus string
		stages, windows        int
		asJSON                 bool
	)
	cmd := &cobra.Command{
		Use:   "eval",
		Short: "Validation loss and perplexity of a checkpoint, optionally with stages omitted",
		Long: `Validation loss and perplexity of a checkpoint on the validation split of its
training corpus. The checkpoint is a 'train' run's directory (or any
whole-model file, such as 'stagecoach export' writes) or a step directory of
a distributed job (its shard-<i>.safetensors, which must hold the model
exactly once). With --skip-stages the model is cut into --stages contiguous
stages and the listed ones are omitted (identity on the residual stream): the
layer-omission robustness measurement of the SkipPipe paper. Stage 0 (the
embedding and head) cannot be skipped.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if ckpt == "" {
				return badInput("--checkpoint is required")
			}
			skip := map[int]bool{}
			if skipList != "" {
				for _, s := range strings.Split(skipList, ",") {
					n, err := strconv.Atoi(strings.TrimSpace(s))
					if err != nil {
						return badInput("--skip-stages: %q is not a stage number", s)
					}
					skip[n] = true
				}
			}
			ck, err := model.OpenCheckpoint(ckpt)
			if err != nil {
				return err
			}
			if ck.Verified == "" {
				fmt.Fprintf(os.Stderr, "note: the shards in %s are unverified: no %s or %s beside them to check their SHA-256 against\n", ckpt, model.SumsFile, model.ManifestFile)
			}
			meta, cfg := ck.Meta, ck.Model
			if stages == 0 {
				stages = max(cfg.Layers, 1)
			}
			if stages > max(cfg.Layers, 1) {
				return badInput("--stages %d exceeds the %d layers", stages, cfg.Layers)
			}
			p, err := ck.Pipeline(stages, model.HeadFirst)
			if err != nil {
				return err
			}
			for s := range skip {
				if s <= 0 || s >= stages {
					return badInput("--skip-stages: stage %d outside 1..%d (stage 0 cannot be skipped)", s, stages-1)
				}
			}
			if corpus == "" {
				corpus = meta[train.MetaCorpus]
			}
			if corpus == "" {
				// A job's shards do not name their corpus: the default
				// one, as for up and train.
				if corpus, err = data.DefaultCorpusDir(); err != nil {
					return err
				}
			}
			maxBytes, _ := strconv.ParseInt(meta[train.MetaMaxBytes], 10, 64)
			c, err := data.Load(corpus, data.Options{MaxBytes: maxBytes})
			if err != nil {
				return err
			}
			win, err := data.EvalWindows(c.Val, windows, cfg.Ctx+1)
			if err != nil {
				return err
			}
			full, err := train.ValLoss(p, win, cfg.Ctx, nil)
			if err != nil {
				return err
			}
			out := map[string]any{"val_loss": full, "perplexity": expf(full), "stages": stages,
				"unigram_entropy": data.UnigramEntropy(c.Val), "step": ck.Step, "verified": ck.Verified}
			line := fmt.Sprintf("full model (%d stages): val loss %.4f, perplexity %.3f", stages, full, expf(full))
			if len(skip) > 0 {
				sk, err := train.ValLoss(p, win, cfg.Ctx, skip)
				if err != nil {
					return err
				}
				out["skip_stages"] = skipList
				out["skip_val_loss"] = sk
				out["skip_perplexity"] = expf(sk)
				line += fmt.Sprintf("\nskipping stages %s: val loss %.4f, perplexity %.3f (%+.1f%% perplexity)",
					skipList, sk, expf(sk), 100*(expf(sk)/expf(full)-1))
			}
			if asJSON {
				return json.NewEncoder(os.Stdout).Encode(out)
			}
			fmt.Println(line)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&ckpt, "checkpoint", "", "checkpoint: a directory holding model.safetensors or a job's shard-<i>.safetensors, or a whole-model file")
	f.StringVar(&skipList, "skip-stages", "", "comma-separated stages to omit, e.g. 2,3")
	f.IntVar(&stages, "stages", 0, "number of stages to cut the model into (0: one per layer)")
	f.StringVar(&corpus, "corpus", "", "corpus directory (default: the one recorded in the checkpoint)")
	f.IntVar(&windows, "windows", 256, "validation windows")
	f.BoolVar(&asJSON, "json", false, "print the result as JSON")
	return cmd
}

func expf(x float64) float64 { return math.Exp(x) }
