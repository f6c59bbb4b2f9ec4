package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/spf13/cobra"

	"stagecoach/internal/etcdx"
	"stagecoach/internal/liveness"
	"stagecoach/internal/memprobe"
	"stagecoach/internal/metrics"
	"stagecoach/internal/tlsx"
	"stagecoach/worker"
)

func init() { rootCmd.AddCommand(newWorkerCmd()) }

func newWorkerCmd() *cobra.Command {
	var (
		etcd, job, name, listen, advertise, dataDir string
		checkpointRoot                              string
		metricsAddr                                 string
		ttl, parentPID                              int
		rejoin                                      time.Duration
		tlsf                                        tlsFlags
		limits                                      workerLimits
		insecureListen, memoryProbe                 bool
		backend                                     backendFlags
		emulateSpeed                                float64
	)
	cmd := &cobra.Command{
		Use:   "worker",
		Short: "Serve one pipeline worker and register it in etcd under a lease",
		Long: `Serve the Worker and Peer gRPC services on --listen and register the worker in
etcd under /stagecoach/<job>/members/<name>, bound to a lease of --ttl seconds
that the process keeps alive: if it dies, the key vanishes and the
coordinator sees it gone. If the lease is lost (etcd unreachable longer than
the TTL) the worker registers again under a new lease, and exits after
--rejoin-timeout without success. With --tls-cert, --tls-key and --tls-ca
the server refuses every caller without a certificate signed by the CA,
accepts control calls only from the job's coordinator certificate and
tensors only from the job's worker certificates (stagecoach certs --job),
and presents its own (which must be this job's worker --name) to its peers
and to etcd (https). Every control call's fence must name the leader the
job's election in etcd shows. Without TLS the worker is unauthenticated:
anyone who reaches its port can control it, so it listens on loopback only
unless --insecure-listen allows another address. With
--metrics-addr it serves Prometheus metrics on /metrics and, on /healthz,
200 while it is registered in etcd (503 before and while re-registering).

SIGTERM or SIGINT stops it within a second: it stops serving, revokes its
lease (giving etcd half a second to answer) and exits 0; a second signal,
or a stop that takes longer than 3 s, exits at once. With --parent-pid the
worker stops the same way when that process, its parent, is gone (how
'stagecoach up' makes sure no worker outlives it).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			// The probe's baseline is this process before it holds a model.
			var probe *memprobe.Probe
			if memoryProbe {
				probe = memprobe.Start()
			}
			eps := etcdx.ParseEndpoints(etcd)
			if len(eps) == 0 {
				return badInput("--etcd needs at least one endpoint (host:port,...)")
			}
			if err := etcdx.ValidateJob(job); err != nil {
				return badInput("--job: %v", err)
			}
			if err := etcdx.ValidateWorkerName(name); err != nil {
				return badInput("--name: %v", err)
			}
			if ttl < etcdx.MinTTL {
				return badInput("--ttl %d is below etcd's minimum of %d s", ttl, etcdx.MinTTL)
			}
			if !(emulateSpeed >= 0 && emulateSpeed <= 1) {
				return badInput("--emulate-speed must be a fraction in (0, 1] of this machine's speed (0: off), got %v", emulateSpeed)
			}
			if parentPID < 0 {
				return badInput("--parent-pid must be a process id (or 0 for none), got %d", parentPID)
			}
			if dataDir == "" {
				dataDir = "worker-" + name
			}
			if err := checkMetricsAddr(metricsAddr); err != nil {
				return err
			}
			tc, err := tlsf.load()
			if err != nil {
				return err
			}
			if err := checkRole(tc, tlsx.Worker(job, name)); err != nil {
				return err
			}
			if err := checkPlaintextListen(tc, listen, insecureListen); err != nil {
				return err
			}
			log := slog.Default().With("role", "worker", "job", job, "worker", name)
			base := cmd.Context()
			if parentPID != 0 {
				base = exitWithParent(base, parentPID, log)
			}
			ctx, stop := stopOnSignal(base, log, workerStopLimit)
			defer stop()
			if tc == nil {
				log.Warn("UNAUTHENTICATED: no --tls-cert: anyone who reaches " + listen + " can control this worker and feed it tensors; use mutual TLS (stagecoach certs --job) beyond a single machine")
			}
			keys, err := etcdx.NewKeys(job)
			if err != nil {
				return badInput("--job: %v", err)
			}
			// Every etcd call ends with ctx (a signal) and within a bound
			// of its own.
			cli, err := etcdx.DialTLS(ctx, eps, time.Duration(ttl)*time.Second, tc)
			if err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return err
			}
			defer cli.Close()
			// Fences are checked against the election itself.
			leader, err := etcdx.WatchLeader(ctx, cli, keys)
			if err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return err
			}
			// The library's Logf lines are rejections and failures; its
			// Infof lines are not.
			var w *worker.Server
			epoch := func() []any {
				if e := w.Epoch(); e > 0 {
					return []any{"epoch", e}
				}
				return nil
			}
			libLogf := logfTo(log, slog.LevelWarn, "worker "+name+": ", epoch)
			infof := logfTo(log, slog.LevelInfo, "worker "+name+": ", epoch)
			wcfg := worker.Config{Name: name, Listen: listen, Job: job, DataDir: dataDir, CheckpointRoot: checkpointRoot, Logf: libLogf, Infof: infof, TLS: tc, Leader: leader}
			wcfg.MemoryProbe = probe
			limits.apply(&wcfg)
			wcfg.EmulateSpeed = emulateSpeed
			if emulateSpeed > 0 && emulateSpeed < 1 {
				log.Info(fmt.Sprintf("EMULATING a node at %g of this machine's compute speed: every forward, loss and backward is followed by a wait", emulateSpeed))
			}
			reg := metrics.NewRegistry()
			wm := metrics.NewWorker(reg)
			be, err := backend.open(ctx, wcfg.Model, os.Stderr, wm.BackendCall)
			if err != nil {
				return err
			}
			defer be.Close()
			wcfg.Backend = be
			if backend.cmd != "" || backend.addr != "" {
				log.Info(fmt.Sprintf("computing with the %s backend", be.Name()), "backend", be.Name())
			}
			w, err = worker.New(wcfg)
			if err != nil {
				return badInput("%v", err)
			}
			w.SetMetrics(wm)
			metrics.RegisterLease(reg, etcdx.LeaseRenewalFailures, etcdx.LeasesLost)
			var registered atomic.Bool
			if metricsAddr != "" {
				srv, err := metrics.Serve(metricsAddr, reg, func() error {
					if !registered.Load() {
						return errors.New("not registered in etcd")
					}
					return nil
				})
				if err != nil {
					return err
				}
				defer srv.Close()
				log.Info("serving metrics on http://"+srv.Addr()+"/metrics", "metrics_addr", srv.Addr())
			}
			addr, err := w.Start()
			if err != nil {
				return err
			}
			// Graceful while running; on a signal an RPC in flight gets
			// a moment, not the 5 s a drained worker could wait.
			defer func() {
				grace := 5 * time.Second
				if ctx.Err() != nil {
					grace = 300 * time.Millisecond
				}
				w.Stop(grace)
			}()
			if advertise == "" {
				advertise = addr
			}
			security := "plaintext"
			if tc != nil {
				security = "mutual TLS"
			}
			log.Info(fmt.Sprintf("serving job %s on %s (%s)", job, addr, security), "addr", addr)
			return liveness.Keep(ctx, cli, keys, etcdx.Member{Name: name, Addr: advertise},
				liveness.Options{TTL: ttl, Rejoin: rejoin, Log: log, Registered: &registered})
		},
	}
	f := cmd.Flags()
	f.StringVar(&etcd, "etcd", "", "etcd endpoints, comma-separated host:port (required)")
	f.StringVar(&job, "job", "", "job id (required)")
	f.StringVar(&name, "name", "", "worker name, unique in the job (required)")
	f.StringVar(&listen, "listen", "127.0.0.1:0", "gRPC listen address (port 0 picks one); without TLS only a loopback address unless --insecure-listen")
	f.BoolVar(&insecureListen, "insecure-listen", false, "allow a non-loopback --listen without TLS: anyone who reaches the port can control the worker")
	f.StringVar(&advertise, "advertise", "", "address peers and the coordinator dial (default: the bound listen address)")
	f.StringVar(&dataDir, "data-dir", "", "the worker's directory (default worker-<name>)")
	f.StringVar(&checkpointRoot, "checkpoint-root", "", "the only directory checkpoints are saved to and loaded from, with everything under it (default --data-dir; with a shared checkpoint directory, the coordinators' --checkpoint-dir or a parent of it)")
	f.IntVar(&ttl, "ttl", etcdx.DefaultTTL, "lease TTL in seconds")
	f.DurationVar(&rejoin, "rejoin-timeout", 30*time.Second, "give up after failing to re-register this long")
	f.StringVar(&metricsAddr, "metrics-addr", "", "serve Prometheus /metrics and /healthz on this HOST:PORT (empty: off)")
	f.Float64Var(&emulateSpeed, "emulate-speed", 0, "EMULATION: compute as a node of this fraction of the machine's speed: the worker waits after each forward, loss and backward until it has taken its compute time / speed (CPU time with the built-in backend, so other processes do not slow it further; wall time with --backend-cmd/--backend-addr) (0: off; 'up --emulate-speed' sets it from the cluster's node speeds)")
	f.BoolVar(&memoryProbe, "memory-probe", false, "measure the live heap after every action and log each iteration's peak over the heap before the model loaded (a full garbage collection per action: slow, for measurements)")
	f.IntVar(&parentPID, "parent-pid", 0, "stop when the process with this id is no longer this worker's parent (0: off; set by 'stagecoach up')")
	tlsf.register(f)
	limits.register(f)
	backend.register(f)
	for _, n := range []string{"etcd", "job", "name"} {
		_ = cmd.MarkFlagRequired(n)
	}
	return cmd
}

// checkMetricsAddr rejects a --metrics-addr that is not HOST:PORT.
func checkMetricsAddr(addr string) error {
	if addr == "" {
		return nil
	}
	_, port, err := net.SplitHostPort(addr)
	if err == nil {
		var n int
		if n, err = strconv.Atoi(port); err == nil && (n < 0 || n > 65535) {
			err = fmt.Errorf("port %d out of range", n)
		}
	}
	if err != nil {
		return badInput("--metrics-addr %q: want HOST:PORT (e.g. :9100 or 127.0.0.1:9100): %v", addr, err)
	}
	return nil
}
