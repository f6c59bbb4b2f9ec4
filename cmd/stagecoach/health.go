package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"stagecoach/internal/tlsx"
	pb "stagecoach/proto"
)

func init() { rootCmd.AddCommand(newHealthCmd()) }

// newHealthCmd is the container health probe. The image is FROM scratch,
// with no shell, curl or etcdctl, so docker-compose healthchecks exec the
// binary itself.
func newHealthCmd() *cobra.Command {
	var workerAddr, etcdAddr string
	var timeout time.Duration
	var tlsf tlsFlags
	cmd := &cobra.Command{
		Use:   "health",
		Short: "Probe a worker or an etcd member; exit 0 when it answers (for container healthchecks)",
		Long: `Probe one service and exit 0 if it is healthy, 1 if not:

  --worker HOST:PORT  the worker's gRPC health service answers SERVING (any
                      certificate of the CA may ask; with the job's
                      coordinator certificate the probe also prints the
                      worker's Status, which only the coordinator may read)
  --etcd HOST:PORT    the etcd member answers Status and knows a cluster leader
                      (a member cut off from quorum is not healthy)

Only the given endpoint is asked: the probe checks that member, not the
cluster through whichever member answers first. Against a cluster with
mutual TLS give the probe a certificate too (--tls-cert, --tls-key,
--tls-ca); a refused handshake is unhealthy.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if (workerAddr == "") == (etcdAddr == "") {
				return badInput("give exactly one of --worker or --etcd")
			}
			tc, err := tlsf.load()
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			if workerAddr != "" {
				return probeWorker(ctx, workerAddr, tc)
			}
			return probeEtcd(ctx, etcdAddr, timeout, tc)
		},
	}
	f := cmd.Flags()
	f.StringVar(&workerAddr, "worker", "", "worker gRPC address to probe (host:port)")
	f.StringVar(&etcdAddr, "etcd", "", "etcd member client address to probe (host:port)")
	f.DurationVar(&timeout, "timeout", 3*time.Second, "give up after this long")
	tlsf.register(f)
	return cmd
}

func probeWorker(ctx context.Context, addr string, tc *tls.Config) error {
	conn, err := grpc.NewClient(addr, tlsx.DialOption(tc))
	if err != nil {
		return fmt.Errorf("health: worker %s: %w", addr, err)
	}
	defer conn.Close()
	// The health service answers whatever the worker is doing; Status is
	// authorized for the job's coordinator only, so it is shown when
	// allowed and its refusal is not a health failure.
	hr, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		return fmt.Errorf("health: worker %s: %w", addr, err)
	}
	if hr.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		return fmt.Errorf("health: worker %s: %v", addr, hr.GetStatus())
	}
	st, err := pb.NewWorkerClient(conn).Status(ctx, &pb.StatusRequest{})
	if err != nil {
		fmt.Fprintf(os.Stdout, "worker at %s: serving\n", addr)
		return nil
	}
	fmt.Fprintf(os.Stdout, "worker %s at %s: epoch %d, applied step %d, stages %v\n", st.Name, addr, st.Epoch, st.AppliedStep, st.Stages)
	return nil
}

// probeEtcd asks the member at addr (host:port) for its status, over TLS
// with tc when set.
func probeEtcd(ctx context.Context, addr string, timeout time.Duration, tc *tls.Config) error {
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{addr}, DialTimeout: timeout, TLS: tc, Logger: zap.NewNop()})
	if err != nil {
		return fmt.Errorf("health: etcd %s: %w", addr, err)
	}
	defer cli.Close()
	st, err := cli.Status(ctx, addr)
	if err != nil {
		return fmt.Errorf("health: etcd %s: %w", addr, err)
	}
	if st.Leader == 0 {
		return fmt.Errorf("health: etcd member %x at %s has no leader (no quorum yet?)", st.Header.GetMemberId(), addr)
	}
	if len(st.Errors) > 0 {
		return fmt.Errorf("health: etcd member %x at %s reports %v", st.Header.GetMemberId(), addr, st.Errors)
	}
	fmt.Fprintf(os.Stdout, "etcd member %x at %s: leader %x, raft term %d, db %d bytes\n", st.Header.GetMemberId(), addr, st.Leader, st.RaftTerm, st.DbSize)
	return nil
}
