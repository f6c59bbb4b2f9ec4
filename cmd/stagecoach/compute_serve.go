package main

import (
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"time"

	"github.com/spf13/cobra"

	"stagecoach/compute/builtin"
	"stagecoach/compute/remote"
	"stagecoach/compute/serve"
	"stagecoach/model"
)

func init() { rootCmd.AddCommand(newComputeServeCmd()) }

// computeStopLimit is how long compute-serve has to stop after SIGTERM.
const computeStopLimit = 3 * time.Second

func newComputeServeCmd() *cobra.Command {
	var (
		listen    string
		parentPID int
		maxParams int64
		maxTensor int64
	)
	cmd := &cobra.Command{
		Use:   "compute-serve",
		Short: "Serve the built-in Go model as a compute backend over the compute protocol",
		Long: `Serve the built-in Go transformer over the compute protocol
(proto/compute/compute.proto) on --listen: a Unix socket (unix:///path) or a
loopback host:port; the protocol has no authentication. A worker started with a
backend command runs it as a child process and sets ` + remote.SocketEnv + ` to
the socket it must serve on, which is --listen's default.

Requests are bounded: a model larger than --max-params is refused, and so is
any tensor larger than --max-tensor-bytes, before anything is allocated.
SIGTERM or SIGINT stops it (exit 0). With --parent-pid it also stops when that
process, its parent, is gone.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if listen == "" {
				sock := os.Getenv(remote.SocketEnv)
				if sock == "" {
					return badInput("--listen is required when %s is not set", remote.SocketEnv)
				}
				listen = "unix://" + sock
			}
			if parentPID < 0 {
				return badInput("--parent-pid must be a process id (or 0 for none), got %d", parentPID)
			}
			if maxParams < 0 || maxTensor < 0 {
				return badInput("--max-params and --max-tensor-bytes must not be negative")
			}
			log := slog.Default().With("role", "compute-serve")
			base := cmd.Context()
			if parentPID != 0 {
				base = exitWithParent(base, parentPID, log)
			}
			ctx, stop := stopOnSignal(base, log, computeStopLimit)
			defer stop()
			srv, err := serve.New(builtin.Backend{Limits: model.Limits{MaxParams: maxParams}}, serve.Options{
				Limits:      serve.Limits{MaxTensorBytes: maxTensor},
				VersionInfo: "stagecoach " + runtime.Version(),
				// The built-in model copies every input it keeps.
				BorrowInputs: true,
			})
			if err != nil {
				return badInput("%v", err)
			}
			lis, err := serve.Listen(listen)
			if err != nil {
				return badInput("--listen: %v", err)
			}
			log.Info(fmt.Sprintf("serving the %s backend on %s", builtin.Name, listen), "listen", listen)
			errc := make(chan error, 1)
			go func() { errc <- srv.Serve(lis) }()
			select {
			case err := <-errc:
				return err
			case <-ctx.Done():
			}
			srv.Stop()
			<-errc
			if lis.Addr().Network() == "unix" {
				_ = os.Remove(lis.Addr().String())
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&listen, "listen", "", "unix:///path or a loopback host:port (default: unix://$"+remote.SocketEnv+")")
	f.IntVar(&parentPID, "parent-pid", 0, "stop when the process with this id is no longer this process's parent (0: off)")
	f.Int64Var(&maxParams, "max-params", model.DefaultMaxParams, "refuse models with more parameters than this")
	f.Int64Var(&maxTensor, "max-tensor-bytes", serve.DefaultMaxTensorBytes, "refuse tensors larger than this many bytes")
	return cmd
}
