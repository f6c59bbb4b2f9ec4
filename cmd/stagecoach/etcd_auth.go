package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"stagecoach/internal/etcdx"
)

func newEtcdInitAuthCmd() *cobra.Command {
	var etcd, job, workers string
	var tlsf tlsFlags
	cmd := &cobra.Command{
		Use:   "init-auth",
		Short: "Create a job's etcd users and roles and turn etcd authentication on",
		Long: `Connect to etcd with the root certificate (CN root; 'stagecoach certs --hosts
root') and create, where missing:

  user root                  etcd's administrator (role root)
  role and user J/coordinator   read and write on /stagecoach/J/
  role and user J/worker/<name> per --workers name: read and write on
                             /stagecoach/J/members/<name> only, read on
                             /stagecoach/J/leader/ (the election)

then turn authentication on. etcd must serve TLS with --client-cert-auth:
a client's certificate CN is its etcd user ('stagecoach certs --job J'
issues CNs J/coordinator and J/worker/<name>), so every user is created
without a password. Run it again with more --workers to admit workers that
join later (etcd cannot grant a worker its own key by a name pattern, so
each worker name is created here); other jobs on the same etcd keep their
users, and no job's users can read or watch another job's keys.

  stagecoach etcd init-auth --etcd etcd-1:2379 --job train1 --workers w1,w2,w3 \
    --tls-cert certs/root.pem --tls-key certs/root-key.pem --tls-ca certs/ca.pem`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			eps := etcdx.ParseEndpoints(etcd)
			if len(eps) == 0 {
				return badInput("--etcd needs at least one endpoint (host:port,...)")
			}
			if err := etcdx.ValidateJob(job); err != nil {
				return badInput("--job: %v", err)
			}
			ws := splitList(workers)
			for _, w := range ws {
				if err := etcdx.ValidateWorkerName(w); err != nil {
					return badInput("--workers: %v", err)
				}
			}
			tc, err := tlsf.load()
			if err != nil {
				return err
			}
			if tc == nil {
				return badInput("init-auth needs --tls-cert, --tls-key and --tls-ca: etcd identifies its users by their client certificates")
			}
			if cn := tc.Certificates[0].Leaf.Subject.CommonName; cn != etcdx.RootUser {
				fmt.Fprintf(os.Stderr, "warning: --tls-cert has CN %q, not %q: this works only while etcd auth is still off\n", cn, etcdx.RootUser)
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), time.Minute)
			defer cancel()
			rep, err := setupEtcdAuth(ctx, eps, tc, etcdx.AuthSpec{Job: job, Workers: ws})
			if err != nil {
				return err
			}
			fmt.Fprintln(os.Stdout, describeAuth(job, rep))
			for _, u := range rep.Unexpected {
				fmt.Fprintf(os.Stderr, "warning: %s (not granted by init-auth; revoke it unless you granted it)\n", u)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&etcd, "etcd", "", "etcd endpoints, comma-separated host:port (required)")
	f.StringVar(&job, "job", "", "job id whose users and roles to create (required)")
	f.StringVar(&workers, "workers", "", "comma-separated worker names to create users for (more can be added later by running again)")
	tlsf.register(f)
	for _, n := range []string{"etcd", "job"} {
		_ = cmd.MarkFlagRequired(n)
	}
	return cmd
}

// setupEtcdAuth dials etcd with tc and runs etcdx.SetupAuth.
func setupEtcdAuth(ctx context.Context, eps []string, tc *tls.Config, spec etcdx.AuthSpec) (etcdx.AuthReport, error) {
	cli, err := etcdx.DialTLS(ctx, eps, 0, tc)
	if err != nil {
		return etcdx.AuthReport{}, err
	}
	defer cli.Close()
	return etcdx.SetupAuth(ctx, cli, spec)
}

// describeAuth is one line saying what SetupAuth did.
func describeAuth(job string, rep etcdx.AuthReport) string {
	state := "was on already"
	if rep.Enabled {
		state = "turned on"
	}
	created := "none"
	if len(rep.Created) > 0 {
		created = strings.Join(rep.Created, ", ")
	}
	return fmt.Sprintf("etcd authentication %s for job %s; users created: %s", state, job, created)
}

// embeddedAuth turns auth on in an embedded etcd just started with TLS,
// for job and workers, dialling with tc. A data directory whose etcd has
// auth on already keeps it as it is (adding users then takes the root
// certificate: stagecoach etcd init-auth).
func embeddedAuth(ctx context.Context, eps []string, tc *tls.Config, spec etcdx.AuthSpec, log *slog.Logger) error {
	cli, err := etcdx.DialTLS(ctx, eps, 0, tc)
	if err != nil {
		return err
	}
	defer cli.Close()
	cn := tc.Certificates[0].Leaf.Subject.CommonName
	if on, err := etcdx.AuthEnabled(ctx, cli); err != nil {
		return err
	} else if on && cn != etcdx.RootUser {
		log.Info("etcd authentication is on already in this data directory, as set up before; to admit more workers run stagecoach etcd init-auth with the root certificate", "role", "etcd")
		return nil
	}
	rep, err := etcdx.SetupAuth(ctx, cli, spec)
	if err != nil {
		return err
	}
	if len(rep.Unexpected) > 0 {
		// Nobody but this process set up this etcd: a grant it did not
		// make was made by a client that reached it before auth was on.
		return fmt.Errorf("embedded etcd: grants this process did not make: %s", strings.Join(rep.Unexpected, "; "))
	}
	log.Info(describeAuth(spec.Job, rep), "role", "etcd")
	return nil
}
