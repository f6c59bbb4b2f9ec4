package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"stagecoach/coordinator"
	"stagecoach/data"
	"stagecoach/internal/etcdx"
	"stagecoach/internal/metrics"
	"stagecoach/internal/tlsx"
	"stagecoach/model"
	"stagecoach/sim"
)

func init() { rootCmd.AddCommand(newCoordinatorCmd()) }

// jobFlags are the flags `up` and `coordinator` share: the job, the model
// and the schedule. Model defaults equal `stagecoach train`'s, so the two
// commands train the same model unless told otherwise.
type jobFlags struct {
	job       string
	etcd      string
	ttl       int
	workers   int
	stages    int
	schedule  string
	allReduce string
	steps     int
	train     model.TrainConfig
	lr        float64
	optimizer string
	corpus    string
	maxBytes  int64
	out       string
	asJSON    bool
	ckpt      bool
	ckptDir   string
	ckptEvery int
	retain    int
	name      string
	// tls is registered by `coordinator`; `up --tls-dir` fills it.
	tls tlsFlags
	// metricsAddr serves the coordinator's Prometheus metrics.
	metricsAddr string
	// httpAddr serves the live page (jobview).
	httpAddr string
	// initFrom is the checkpoint a new job starts from
	// (coordinator.Config.InitFrom).
	initFrom        string
	initWeightsOnly bool
	// backendName, when set, is the compute backend every worker must
	// compute with (the workers refuse the job otherwise).
	backendName string
	// backend is how `up` starts its workers' backends.
	backend backendFlags
	// balance places the stages' layers for the cost model
	// (coordinator.Config.Balance).
	balance bool
	// workerSpeeds are the compute speeds `up --emulate-speed` has its
	// workers emulate, by name.
	workerSpeeds map[string]float64
	// memoryProbe starts `up`'s workers with --memory-probe.
	memoryProbe bool
}

func (j *jobFlags) register(f *pflag.FlagSet, defaultJob string) {
	f.StringVar(&j.job, "job", defaultJob, "job id: every etcd key and worker command carries it")
	f.IntVar(&j.ttl, "ttl", etcdx.DefaultTTL, "etcd lease TTL in seconds (2 or more)")
	f.IntVar(&j.workers, "workers", 2, "workers to wait for and train on")
	f.IntVar(&j.stages, "stages", 0, "pipeline stages (0: one per worker; workers/stages replicas each)")
	f.StringVar(&j.schedule, "schedule", "gpipe", "pipeline schedule (gpipe, 1f1b, ..., skippipe, skippipe-full, ...)")
	f.StringVar(&j.backendName, "backend", "", "require every worker to compute with this backend (go, torch, ...; empty: any)")
	f.IntVar(&j.steps, "steps", 20, "optimizer steps")
	f.IntVar(&j.train.Model.Layers, "layers", 4, "transformer blocks")
	f.IntVar(&j.train.Model.Dim, "dim", 128, "model width")
	f.IntVar(&j.train.Model.Heads, "heads", 4, "attention heads (must divide --dim)")
	f.IntVar(&j.train.Model.Ctx, "ctx", 64, "context length in bytes")
	f.IntVar(&j.train.Microbatches, "microbatches", 4, "microbatches per optimizer step")
	f.IntVar(&j.train.MicrobatchSize, "microbatch-size", 8, "sequences per microbatch")
	f.Uint64Var(&j.train.Model.Seed, "seed", 1, "seed for initialisation and data order")
	f.Float64Var(&j.lr, "lr", 0, "peak learning rate (0: 3e-3 for adamw, 3e-2 for lamb)")
	f.StringVar(&j.optimizer, "optimizer", "adamw", "adamw or lamb")
	f.StringVar(&j.allReduce, "all-reduce", "", "replicas' gradient all-reduce: ordered (exact; the classic schedules' default), auto (cheaper of ring and direct under the cost model; SkipPipe's default), ring or direct")
	f.StringVar(&j.corpus, "corpus", "", "directory of text files (default $(go env GOROOT)/src)")
	f.Int64Var(&j.maxBytes, "max-bytes", data.DefaultMaxBytes, "load at most this many bytes of the corpus")
	f.BoolVar(&j.asJSON, "json", false, "print one JSON object per step on stdout")
	f.BoolVar(&j.ckpt, "checkpoint", true, "save the workers' shards after the last step")
	f.IntVar(&j.retain, "retain", 3, "committed checkpoints kept listed and on disk; older ones are removed (negative: keep all)")
	f.StringVar(&j.name, "name", "coordinator", "this coordinator's name in the leader election (standbys campaign under their own)")
	f.StringVar(&j.metricsAddr, "metrics-addr", "", "serve Prometheus /metrics and /healthz on this HOST:PORT (empty: off)")
	f.StringVar(&j.ckptDir, "checkpoint-dir", "", "checkpoint root (default <out>/checkpoints): the workers' --checkpoint-root must contain it; only listed checkpoints under it are loaded or deleted, so every coordinator of a job names the same one")
	f.StringVar(&j.httpAddr, "http-addr", "", "serve the job's live page on this HOST:PORT, over HTTPS requiring a client certificate of the cluster CA when TLS is on (empty: off)")
	f.StringVar(&j.initFrom, "init-from", "", "start the job from this checkpoint instead of the seed: a train run's directory or model.safetensors, an exported file, or another job's step directory (shard-<i>.safetensors); the model flags must match it, and --steps counts its steps")
	f.BoolVar(&j.initWeightsOnly, "init-weights-only", false, "with --init-from, take only the weights: fresh optimizer moments, steps counted from 1")
	f.BoolVar(&j.balance, "balance", false, "place contiguous layer ranges on the stages for the cost model's node speeds and head cost (needs --cluster with node speeds, or --costs; classic schedules), kept when the simulator says the iteration is faster than on the even split")
	f.IntVar(&j.ckptEvery, "checkpoint-every", 0, "also checkpoint every N steps; a job rerun with the same --job resumes from its newest committed checkpoint and replays the committed steps after it")
}

// config checks the flags and builds the coordinator's config.
func (j *jobFlags) config(endpoints []string) (coordinator.Config, error) {
	if j.optimizer != "adamw" && j.optimizer != "lamb" {
		return coordinator.Config{}, badInput("--optimizer must be adamw or lamb, got %q", j.optimizer)
	}
	if j.lr < 0 {
		return coordinator.Config{}, badInput("--lr must not be negative")
	}
	if err := checkMetricsAddr(j.metricsAddr); err != nil {
		return coordinator.Config{}, err
	}
	if err := checkHTTPAddr(j.httpAddr); err != nil {
		return coordinator.Config{}, err
	}
	tc := j.train
	tc.Optim = model.OptimConfig{Kind: j.optimizer, LR: j.lr}
	tlsConf, err := j.tls.load()
	if err != nil {
		return coordinator.Config{}, err
	}
	// The workers take control calls only from this role.
	if err := checkRole(tlsConf, tlsx.Coordinator(j.job)); err != nil {
		return coordinator.Config{}, err
	}
	cfg := coordinator.Config{
		Job: j.job, Endpoints: endpoints, Simulator: sim.Simulator{}, TTL: j.ttl, Workers: j.workers, Stages: j.stages,
		Schedule: j.schedule, Train: tc, Steps: j.steps, CorpusDir: j.corpus, MaxCorpusBytes: j.maxBytes,
		OutDir: j.out, CheckpointDir: j.ckptDir, Checkpoint: j.ckpt, CheckpointEvery: j.ckptEvery, Retain: j.retain, Name: j.name,
		TLS: tlsConf, AllReduce: j.allReduce, Backend: j.backendName, Balance: j.balance,
	}
	switch {
	case j.initFrom != "":
		ck, err := model.OpenCheckpoint(j.initFrom)
		if err != nil {
			return cfg, fmt.Errorf("--init-from: %w", err)
		}
		if ck.Verified == "" {
			slog.Warn(fmt.Sprintf("--init-from %s: the shards are unverified: no %s or %s beside them to check their SHA-256 against", j.initFrom, model.SumsFile, model.ManifestFile))
		}
		cfg.InitFrom, cfg.InitWeightsOnly = ck, j.initWeightsOnly
	case j.initWeightsOnly:
		return cfg, badInput("--init-weights-only needs --init-from")
	}
	if err := cfg.Validate(); err != nil {
		return cfg, badInput("%v", err)
	}
	return cfg, nil
}

func newCoordinatorCmd() *cobra.Command {
	var j jobFlags
	var emu emulationFlags
	var embedURL string
	var authWorkers []string
	cmd := &cobra.Command{
		Use:   "coordinator",
		Short: "Lead a job: wait for workers in etcd, place stages, drive training",
		Long: `Campaign for leadership of --job in etcd (only the leader gives orders; its
election revision fences every command), wait for --workers workers to
register, build and validate the --schedule plan, hand it to the workers and
drive --steps optimizer steps, committing each in etcd. Without --etcd it
serves an embedded single-node etcd (data in --out/etcd) for the workers to
join. Writes the plan (by content hash), summary.json, trace.json and
loss.png into --out. With --tls-cert, --tls-key and --tls-ca it talks
mutual TLS to the workers and to etcd (the embedded one then serves https
and requires client certificates of the same CA). With --cluster or
--preset the workers, matched to the cluster's nodes by name, emulate its
links, and the planner prices hops with it.

Off a terminal it logs one line per step (step, loss, time) and, whenever
a plan is installed, which worker holds which stage. SIGTERM or SIGINT
stops it gracefully (leadership resigned, so a standby takes over at
once) with exit status 0; so does winning the election of a job that has
already committed all its steps. A leader whose session expired while
nobody else took over (a starved host) campaigns again in-process. Give
it a longer --ttl than the workers': it bounds only how fast a crashed
leader is replaced, and a longer one rides out CPU starvation.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			eps := etcdx.ParseEndpoints(j.etcd)
			cfg, err := emu.config(&j, []string{"pending"})
			if err != nil {
				return err
			}
			if len(authWorkers) > 0 && (len(eps) > 0 || cfg.TLS == nil) {
				return badInput("--auth-workers sets up the embedded etcd's authentication: it needs TLS (--tls-*) and no --etcd (for a cluster, use stagecoach etcd init-auth)")
			}
			for _, w := range authWorkers {
				if err := etcdx.ValidateWorkerName(w); err != nil {
					return badInput("--auth-workers: %v", err)
				}
			}
			log := slog.Default().With("role", "coordinator", "job", j.job, "name", j.name)
			ctx, stop := stopOnSignal(cmd.Context(), log, coordinatorStopLimit)
			defer stop()
			// A leader deposed only because it was starved past its TTL
			// (nobody else took over) leads again in this process.
			cfg.Recampaign = true
			if len(eps) == 0 {
				// No cluster given: serve an embedded single-node etcd
				// that the workers join.
				// With TLS it serves https with this node's certificate
				// and requires one of the same CA from every client.
				e, err := etcdx.StartEmbedded(ctx, etcdx.EmbedConfig{Dir: filepath.Join(j.out, "etcd"), ClientURL: embedURL, TLS: j.tls.files})
				if err != nil {
					return err
				}
				defer e.Close()
				eps = e.Endpoints()
				slog.Info(fmt.Sprintf("embedded etcd serving on %s (data %s); start workers with --etcd %s --job %s",
					strings.Join(eps, ","), filepath.Join(j.out, "etcd"), strings.Join(eps, ","), j.job),
					"role", "etcd", "endpoints", strings.Join(eps, ","))
				switch {
				case cfg.TLS != nil && len(authWorkers) > 0:
					spec := etcdx.AuthSpec{Job: j.job, Coordinator: cfg.TLS.Certificates[0].Leaf.Subject.CommonName, Workers: authWorkers}
					if err := embeddedAuth(ctx, eps, cfg.TLS, spec, slog.Default()); err != nil {
						return err
					}
				case cfg.TLS != nil:
					slog.Warn("embedded etcd WITHOUT authentication: any certificate of the CA may write this job's keys; give --auth-workers to turn it on", "role", "etcd")
				}
			}
			cfg.Endpoints = eps
			err = runJob(ctx, cfg, j.asJSON, j.metricsAddr, j.httpAddr, nil)
			switch {
			case err != nil && stoppedBySignal(ctx):
				// Asked to stop, and stopped: leadership resigned,
				// nothing failed.
				log.Info(fmt.Sprintf("%v: stopped; leadership of job %s resigned", context.Cause(ctx), j.job))
				return nil
			case errors.Is(err, coordinator.ErrJobFinished):
				// A standby outliving the leader that finished.
				log.Info(fmt.Sprintf("nothing to do: %v", err))
				return nil
			}
			return err
		},
	}
	f := cmd.Flags()
	j.register(f, "")
	f.StringVar(&j.etcd, "etcd", "", "etcd endpoints, comma-separated host:port (default: serve an embedded etcd on --embed-etcd-url)")
	f.StringVar(&embedURL, "embed-etcd-url", "http://127.0.0.1:2379", "client URL of the embedded etcd when --etcd is empty")
	f.StringSliceVar(&authWorkers, "auth-workers", nil, "with TLS and the embedded etcd: turn etcd authentication on, with users for the job's coordinator and these workers (certificate CNs <job>/coordinator and <job>/worker/<name>); admit more later with stagecoach etcd init-auth")
	f.StringVar(&j.out, "out", "run-coordinator", "directory for plans, summary, trace, loss plot and checkpoints")
	j.tls.register(f)
	emu.register(f)
	_ = cmd.MarkFlagRequired("job")
	return cmd
}

// runJob runs a coordinator with the progress bar or JSON lines, then
// prints the summary table and writes the summary, trace and loss plot.
// The coordinator's lines go to slog unless a progress bar is drawn; with
// metricsAddr it serves Prometheus metrics there while it runs, with
// httpAddr the live page (its URL passed to onLive).
func runJob(ctx context.Context, cfg coordinator.Config, asJSON bool, metricsAddr, httpAddr string, onLive func(url string)) error {
	if err := os.MkdirAll(cfg.OutDir, 0o755); err != nil {
		return err
	}
	reg := metrics.NewRegistry()
	cfg.Metrics = metrics.NewCoordinator(reg)
	metrics.RegisterLease(reg, etcdx.LeaseRenewalFailures, etcdx.LeasesLost)
	metrics.RegisterIgnored(reg, etcdx.IgnoredKinds, etcdx.Ignored)
	log := slog.Default().With("role", "coordinator", "job", cfg.Job, "name", cfg.Name)
	// Forged or malformed etcd records are warnings, whether or not a
	// progress bar is drawn.
	etcdx.SetWarnf(logfTo(log, slog.LevelWarn, "", nil))
	defer etcdx.SetWarnf(nil)
	if cfg.TLS == nil {
		log.Warn("UNAUTHENTICATED job: no mutual TLS, so the workers cannot tell this coordinator from anyone who reaches their ports; fine for one machine's loopback, use --tls-* (stagecoach certs --job) elsewhere")
	}
	if metricsAddr != "" {
		srv, err := metrics.Serve(metricsAddr, reg, nil)
		if err != nil {
			return err
		}
		defer srv.Close()
		log.Info("serving metrics on http://"+srv.Addr()+"/metrics", "metrics_addr", srv.Addr())
	}
	var live *liveServer
	if httpAddr != "" {
		var err error
		if live, err = startLive(ctx, httpAddr, cfg.Job, cfg.Endpoints, cfg.TLS); err != nil {
			return err
		}
		defer live.close()
		log.Info("serving the live page on "+live.srv.URL(), "http_addr", live.srv.Addr())
		if onLive != nil {
			onLive(live.srv.URL())
		}
	}
	prog := newProgress(os.Stderr, cfg.Steps, "train", !asJSON)
	enc := json.NewEncoder(os.Stdout)
	cfg.OnStep = func(r coordinator.StepReport) {
		live.step(r)
		if asJSON {
			_ = enc.Encode(r)
		} else if prog.bar == nil {
			// Off a terminal (docker logs, a file): a line per step.
			log.Info(fmt.Sprintf("step %d/%d loss %.4f (%.2f s, %.0f tok/s)", r.Step, cfg.Steps, r.Loss, r.IterationS, r.TokensPerS),
				"step", r.Step, "loss", r.Loss, "iteration_s", r.IterationS)
		}
		if prog.bar != nil {
			prog.bar.Describe(fmt.Sprintf("loss %.4f  %.0f tok/s", r.Loss, r.TokensPerS))
		}
		prog.Add(1)
	}
	if prog.bar == nil {
		m := cfg.Metrics
		cfg.Logf = logfTo(log, slog.LevelInfo, "", func() []any {
			var a []any
			if e := m.Epoch(); e > 0 {
				a = append(a, "epoch", e)
			}
			if t := m.FencingToken(); t > 0 {
				a = append(a, "fencing_token", t)
			}
			return a
		})
	}
	co, err := coordinator.New(cfg)
	if err != nil {
		return badInput("%v", err)
	}
	sum, err := co.Run(ctx)
	prog.Finish()
	if err != nil {
		return err
	}
	return writeOutputs(sum, cfg.OutDir, asJSON)
}

func writeOutputs(sum *coordinator.Summary, dir string, asJSON bool) error {
	var tableOut io.Writer = os.Stdout
	if asJSON {
		tableOut = os.Stderr
	}
	if err := sum.WriteTable(tableOut); err != nil {
		return err
	}
	files := []string{}
	p := filepath.Join(dir, "summary.json")
	if err := sum.WriteJSON(p); err != nil {
		return err
	}
	files = append(files, p)
	if sum.Measured != nil {
		p = filepath.Join(dir, "trace.json")
		if err := sum.WriteTrace(p); err != nil {
			return err
		}
		files = append(files, p)
	}
	if sum.Calibration != nil {
		p = filepath.Join(dir, "calibration.yaml")
		if err := sum.WriteCalibration(p); err != nil {
			return err
		}
		files = append(files, p)
	}
	xs, ys := make([]float64, len(sum.Steps)), make([]float64, len(sum.Steps))
	for i, s := range sum.Steps {
		xs[i], ys[i] = float64(s.Step), s.Loss
	}
	p = filepath.Join(dir, "loss.png")
	title := fmt.Sprintf("stagecoach up: %s over %d workers", sum.Schedule, sum.Workers)
	if err := sim.WriteLinePlot(p, title, "step", "training loss (nats/byte)", []sim.Series{{Name: "train", X: xs, Y: ys}}); err != nil {
		return err
	}
	files = append(files, p)
	if sum.Checkpoint != "" {
		files = append(files, sum.Checkpoint)
	}
	fmt.Fprintf(tableOut, "wrote %v\n", files)
	return nil
}
