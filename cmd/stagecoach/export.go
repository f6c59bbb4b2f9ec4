package main

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"stagecoach/model"
)

func init() { rootCmd.AddCommand(newExportCmd()) }

func newExportCmd() *cobra.Command {
	var ckpt, out string
	var withOptim bool
	cmd := &cobra.Command{
		Use:   "export",
		Short: "Merge a checkpoint (a job's shard set or a train run's) into one whole-model safetensors file",
		Long: `Write a checkpoint as one whole-model safetensors file in the format
'stagecoach train' writes: the parameters under their model names, with
--with-optimizer also the AdamW/LAMB moments (optim.m.<name>,
optim.v.<name>), and the metadata format, model_config, train_config and
step (plus the data position and corpus when the checkpoint has them).
--checkpoint is a step directory of a distributed job (its
shard-<i>.safetensors must hold the model exactly once and agree on job,
step and model), a train run's directory or a whole-model file. The shards
are checked against the SHA256SUMS or the job's manifest.json in their
directory when there is one. The file is written atomically and listed,
with its SHA-256, in the SHA256SUMS of its directory; 'eval',
'train --resume' (with --with-optimizer) and 'up --init-from' read it.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if ckpt == "" || out == "" {
				return badInput("--checkpoint and --out are required")
			}
			if st, err := os.Stat(out); err == nil && st.IsDir() {
				return badInput("--out %s is a directory: name the file to write, e.g. %s", out, filepath.Join(out, model.WholeModelFile))
			}
			ck, err := model.OpenCheckpoint(ckpt)
			if err != nil {
				return err
			}
			if withOptim && !ck.Moments {
				return badInput("--with-optimizer: %s holds no optimizer moments", ckpt)
			}
			if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
				return err
			}
			if err := ck.Export(out, withOptim); err != nil {
				return err
			}
			verified := "verified against " + ck.Verified
			if ck.Verified == "" {
				verified = "UNVERIFIED: no " + model.SumsFile + " or " + model.ManifestFile + " beside the shards"
			}
			what := "weights"
			if withOptim {
				what = "weights and optimizer moments"
			}
			fmt.Printf("exported step %d of %s (%d file(s), %s): %s to %s, listed in %s\n",
				ck.Step, ckpt, len(ck.Files), verified, what, out, filepath.Join(filepath.Dir(out), model.SumsFile))
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&ckpt, "checkpoint", "", "checkpoint: a job's step directory (shard-<i>.safetensors), a train run's directory or a whole-model file")
	f.StringVar(&out, "out", "", "whole-model safetensors file to write")
	f.BoolVar(&withOptim, "with-optimizer", false, "include the optimizer moments (needed to resume training from the file)")
	return cmd
}
