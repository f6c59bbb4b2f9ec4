package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"stagecoach/internal/etcdx"
	"stagecoach/internal/parallel"
	"stagecoach/internal/tlsx"
)

func init() { rootCmd.AddCommand(newUpCmd()) }

func newUpCmd() *cobra.Command {
	var j jobFlags
	var emu emulationFlags
	var resume, force, emulateSpeed bool
	var tlsDir string
	cmd := &cobra.Command{
		Use:   "up",
		Short: "Run a whole local cluster: embedded etcd, N worker processes, one coordinator",
		Long: `Start an embedded single-node etcd (unless --etcd names a cluster), --workers
worker processes on loopback (this binary re-executed as 'stagecoach worker',
each registered in etcd under a lease) and one coordinator in this process,
and train the default model on the default corpus ($(go env GOROOT)/src).
Shows a progress bar on a terminal; --json prints one object per step with
step and loss, like 'stagecoach train --json'. With the same model flags and
seed, a gpipe or 1f1b run prints the same losses as 'stagecoach train', bit
for bit. At the end prints loss, tokens/s, iteration time and the bubble
measured against the simulator's (the same plan, a cost model calibrated
from the workers' measured action times), and writes summary.json,
trace.json (measured and simulated, Perfetto), loss.png and the workers'
checkpoint into --out. Workers log to --out/workers/<name>.log. With
--tls-dir DIR every hop runs mutual TLS: a demo CA and certificates for
etcd, the coordinator and each worker (carrying their roles in the job)
are generated into DIR (an existing CA there is reused; see 'stagecoach
certs'), and the embedded etcd turns authentication on: the coordinator
may write only the job's keys, a worker only its own registration (see
'stagecoach etcd init-auth'). With --metrics-addr HOST:P
the coordinator serves Prometheus metrics on HOST:P and worker i on
HOST:P+1+i; the workers log in the --log-format given to up. The workers
never outlive up: stopped in order when it stops, killed by the kernel
should it die (kill -9), and each watches for its parent's exit too.
With --backend-cmd each worker computes its stages in a backend process
it starts (e.g. the PyTorch backend, see docs/backends.md).
An --out holding an earlier run is refused: continue it with --resume,
or clear its checkpoints with --force. --init-from starts the job from a
checkpoint (a train run, an exported file or another job's step
directory) instead of the seed; see docs/checkpoints.md.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if j.workers < 1 {
				return badInput("--workers must be at least 1, got %d", j.workers)
			}
			if err := j.backend.check(); err != nil {
				return err
			}
			names, err := emu.workerNames(&j, cmd.Flags())
			if err != nil {
				return err
			}
			if emulateSpeed {
				if j.workerSpeeds, err = emu.speeds(names); err != nil {
					return err
				}
			}
			if resume && force {
				return badInput("--resume continues the run in --out and --force clears it: give one")
			}
			if resume && j.initFrom == "" {
				// The job's commits run from its initial checkpoint's
				// step: resuming it needs that checkpoint again.
				if st, err := readUpState(j.out); err == nil && st.InitFrom != "" {
					j.initFrom, j.initWeightsOnly = st.InitFrom, st.InitWeightsOnly
					slog.Info(fmt.Sprintf("resuming a job started from %s", st.InitFrom))
				}
			}
			if j.metricsAddr != "" {
				if err := checkMetricsAddr(j.metricsAddr); err != nil {
					return err
				}
				if _, err := workerMetricsAddr(j.metricsAddr, j.workers-1); err != nil {
					return badInput("--metrics-addr: %v", err)
				}
			}
			if tlsDir != "" {
				// etcd's server certificate carries no role; the
				// coordinator's and the workers' carry the job's.
				var ws []string
				for i := range j.workers {
					ws = append(ws, upWorkerName(i, names))
				}
				certs, err := tlsx.JobCerts(j.job, true, ws)
				if err != nil {
					return badInput("--tls-dir: %v", err)
				}
				// root administers the embedded etcd's auth.
				if _, err := tlsx.Issue(tlsDir, append([]tlsx.Cert{{File: "etcd"}, {File: tlsx.RootCN}}, certs...), 0); err != nil {
					return badInput("--tls-dir: %v", err)
				}
				// The coordinator's files; startWorkers takes each
				// worker's from the same directory.
				j.tls.files = tlsx.FilesFor(tlsDir, "coordinator")
			}
			// Check every flag before starting anything; the endpoints
			// are filled in once etcd runs.
			cfg, err := emu.config(&j, []string{"pending"})
			if err != nil {
				return err
			}
			if !resume {
				if err := refuseOrClear(j.out, cfg.CheckpointDir, j.etcd == "", force); err != nil {
					return err
				}
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			if tlsDir == "" {
				slog.Warn("UNAUTHENTICATED job: without --tls-dir anyone on this machine who reaches the workers' loopback ports can control them")
			}
			if err := os.MkdirAll(j.out, 0o755); err != nil {
				return err
			}
			eps := etcdx.ParseEndpoints(j.etcd)
			if len(eps) == 0 {
				// A fresh single-node etcd per run: its state belongs to
				// this run only. --resume keeps it: the job's committed
				// steps and checkpoint listings survive, and the
				// coordinator resumes from the newest checkpoint.
				dir := filepath.Join(j.out, "etcd")
				if !resume {
					if err := os.RemoveAll(dir); err != nil {
						return err
					}
				}
				ec := etcdx.EmbedConfig{Dir: dir}
				if tlsDir != "" {
					ec.TLS = tlsx.FilesFor(tlsDir, "etcd")
				}
				e, err := etcdx.StartEmbedded(ctx, ec)
				if err != nil {
					return err
				}
				defer e.Close()
				eps = e.Endpoints()
				if tlsDir != "" {
					// Every process then reaches only its own keys:
					// the coordinator the job's, a worker its
					// registration (etcdx.SetupAuth).
					root, err := tlsx.Load(tlsx.FilesFor(tlsDir, tlsx.RootCN))
					if err != nil {
						return err
					}
					ws := make([]string, j.workers)
					for i := range ws {
						ws[i] = upWorkerName(i, names)
					}
					if err := embeddedAuth(ctx, eps, root, etcdx.AuthSpec{Job: j.job, Workers: ws}, slog.Default()); err != nil {
						return err
					}
				}
			}
			cfg.Endpoints = eps
			// What `stagecoach status --out` needs to find this job.
			st := upState{PID: os.Getpid(), Job: j.job, Endpoints: eps, Embedded: j.etcd == "", Started: time.Now().UTC(), InitWeightsOnly: j.initWeightsOnly}
			if j.initFrom != "" {
				if st.InitFrom, err = filepath.Abs(j.initFrom); err != nil {
					return err
				}
			}
			if tlsDir != "" {
				if st.TLSDir, err = filepath.Abs(tlsDir); err != nil {
					return err
				}
			}
			if err := st.write(j.out); err != nil {
				return err
			}
			procs, err := startWorkers(eps, &j, names)
			defer stopWorkers(procs)
			if err != nil {
				return err
			}
			// A worker that dies takes the run down with it rather than
			// leaving the coordinator waiting on RPC timeouts.
			rctx, cancel := context.WithCancelCause(ctx)
			defer cancel(nil)
			for _, p := range procs {
				go func() {
					<-p.done
					cancel(fmt.Errorf("worker %s exited: %v (log: %s)", p.name, p.err, p.log))
				}()
			}
			err = runJob(rctx, cfg, j.asJSON, j.metricsAddr, j.httpAddr, func(url string) {
				st.LiveURL = url
				if err := st.write(j.out); err != nil {
					slog.Warn("record the live page's address: " + err.Error())
				}
			})
			if err != nil && ctx.Err() != nil {
				return errors.New("interrupted; workers and etcd stopped")
			}
			if cause := context.Cause(rctx); err != nil && cause != nil && cause != context.Canceled {
				return fmt.Errorf("%w (%v)", err, cause)
			}
			return err
		},
	}
	f := cmd.Flags()
	j.register(f, "up")
	f.StringVar(&j.etcd, "etcd", "", "etcd endpoints, comma-separated host:port (default: start an embedded etcd)")
	f.StringVar(&j.out, "out", "run-up", "directory for etcd data, worker logs, plans, summary, trace, loss plot and checkpoints")
	emu.register(f)
	j.backend.register(f)
	f.BoolVar(&emulateSpeed, "emulate-speed", false, "EMULATION: each worker computes at its --cluster/--preset node's speed as a fraction of this machine's (0.5: half), waiting after each forward, loss and backward until it has taken its compute time / speed (see 'stagecoach worker --emulate-speed'); off by default")
	f.BoolVar(&j.memoryProbe, "memory-probe", false, "have every worker measure its live heap after each action and log each iteration's peak (a full garbage collection per action: slow, for measurements)")
	f.StringVar(&tlsDir, "tls-dir", "", "run every gRPC and etcd hop over mutual TLS with a demo CA and certificates generated into this directory")
	f.BoolVar(&force, "force", false, "run even though --out holds an earlier run: remove its checkpoint step directories, etcd data and summary files first (nothing else)")
	f.BoolVar(&resume, "resume", false, "keep --out's embedded etcd data and resume the job from its newest committed checkpoint (use the same --out, --job and model flags; --checkpoint-every makes the resume point recent)")
	return cmd
}

// workerProc is one worker child process.
type workerProc struct {
	name, log string
	cmd       *exec.Cmd
	done      chan struct{}
	err       error
}

// startWorkers starts j.workers copies of this binary as `stagecoach
// worker`, each with its own data directory and log file, named names[i]
// (an emulated cluster's nodes) or w<i>.
// upWorkerName names up's worker i: after the emulated cluster's node
// when there is one, else w<i>.
func upWorkerName(i int, names []string) string {
	if i < len(names) {
		return names[i]
	}
	return "w" + strconv.Itoa(i)
}

func startWorkers(eps []string, j *jobFlags, names []string) ([]*workerProc, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("find this executable to start workers: %w", err)
	}
	wdir := filepath.Join(j.out, "workers")
	if err := os.MkdirAll(wdir, 0o755); err != nil {
		return nil, err
	}
	// The workers save into the coordinator's checkpoint directory and
	// nowhere else.
	root := j.ckptDir
	if root == "" {
		root = filepath.Join(j.out, "checkpoints")
	}
	if root, err = filepath.Abs(root); err != nil {
		return nil, err
	}
	var procs []*workerProc
	for i := range j.workers {
		name := upWorkerName(i, names)
		logPath := filepath.Join(wdir, name+".log")
		logf, err := os.Create(logPath)
		if err != nil {
			return procs, err
		}
		c := exec.Command(exe, "worker", "--etcd", strings.Join(eps, ","), "--job", j.job, "--name", name,
			"--listen", "127.0.0.1:0", "--data-dir", filepath.Join(wdir, name), "--checkpoint-root", root, "--ttl", strconv.Itoa(j.ttl),
			"--parent-pid", strconv.Itoa(os.Getpid()))
		// The workers log as this process does; with --metrics-addr
		// HOST:P they serve metrics on HOST:P+1, HOST:P+2, ... (port 0:
		// each picks one and logs it).
		c.Args = append(c.Args, logFlagArgs()...)
		c.Args = append(c.Args, j.backend.args()...)
		if sp, ok := j.workerSpeeds[name]; ok && sp < 1 {
			c.Args = append(c.Args, "--emulate-speed", strconv.FormatFloat(sp, 'g', -1, 64))
		}
		if j.memoryProbe {
			c.Args = append(c.Args, "--memory-probe")
		}
		if j.metricsAddr != "" {
			addr, err := workerMetricsAddr(j.metricsAddr, i)
			if err != nil {
				logf.Close()
				return procs, badInput("--metrics-addr: %v", err)
			}
			c.Args = append(c.Args, "--metrics-addr", addr)
		}
		if j.tls.files.Enabled() {
			// up --tls-dir: every node's files side by side.
			tf := tlsx.FilesFor(filepath.Dir(j.tls.files.Cert), name)
			c.Args = append(c.Args, "--tls-cert", tf.Cert, "--tls-key", tf.Key, "--tls-ca", tf.CA)
		}
		c.Env = workerEnv(j.workers)
		c.Stdout, c.Stderr = logf, logf
		// Own process group: a terminal's ctrl-C reaches only `up`, which
		// then stops the workers in order. Should `up` die without
		// stopping them (kill -9), the kernel kills them (Pdeathsig), and
		// each also watches for its parent's exit (--parent-pid).
		c.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
		if err := startOnLockedThread(c); err != nil {
			logf.Close()
			return procs, fmt.Errorf("start worker %s: %w", name, err)
		}
		p := &workerProc{name: name, log: logPath, cmd: c, done: make(chan struct{})}
		go func() {
			p.err = c.Wait()
			logf.Close()
			close(p.done)
		}()
		procs = append(procs, p)
	}
	return procs, nil
}

// launches are the process starts that launcherThread runs.
var (
	launchOnce sync.Once
	launches   chan func()
)

// startOnLockedThread starts c from one OS thread that lives as long as
// this process. The kernel sends a child's parent-death signal when the
// thread that forked it exits, not the process; the Go runtime may end a
// thread while the process runs on (when a goroutine locked to it
// returns), which would kill a worker of a healthy `up`. A goroutine
// locked to its thread for good keeps that thread alive.
func startOnLockedThread(c *exec.Cmd) error {
	launchOnce.Do(func() {
		launches = make(chan func())
		go func() {
			runtime.LockOSThread() // never unlocked: the thread must not be reused or end
			for f := range launches {
				f()
			}
		}()
	})
	errc := make(chan error, 1)
	launches <- func() { errc <- c.Start() }
	return <-errc
}

// stopWorkers asks every worker to stop (SIGTERM), then kills those still
// running after 5 s.
func stopWorkers(procs []*workerProc) {
	for _, p := range procs {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
	}
	deadline := time.Now().Add(5 * time.Second)
	for _, p := range procs {
		select {
		case <-p.done:
		case <-time.After(time.Until(deadline)):
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	}
}

// workerMetricsAddr is worker i's metrics address when the coordinator
// serves on addr: the next ports up, or port 0 for port 0.
func workerMetricsAddr(addr string, i int) (string, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", err
	}
	p, err := strconv.Atoi(port)
	if err != nil {
		return "", err
	}
	if p == 0 {
		return addr, nil
	}
	if p+1+i > 65535 {
		return "", fmt.Errorf("port %d leaves no room for %d workers' metrics ports above it", p, i+1)
	}
	return net.JoinHostPort(host, strconv.Itoa(p+1+i)), nil
}

// workerEnv is the environment of up's workers: this process's (nil), or,
// when several workers share this machine's cores and STAGECOACH_WAIT is
// not set, this process's with the passive wait policy: a worker's thread
// kept awake for its next parallel loop would hold a core another worker
// is waiting for (`up --workers 3` on two cores ran 16-27% slower so).
func workerEnv(workers int) []string {
	if _, set := os.LookupEnv(parallel.WaitEnv); set || workers < 2 {
		return nil
	}
	return append(os.Environ(), parallel.WaitEnv+"=passive")
}
