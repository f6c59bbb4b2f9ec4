package main

import (
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"stagecoach/internal/tlsx"
)

func init() { rootCmd.AddCommand(newCertsCmd()) }

func newCertsCmd() *cobra.Command {
	var out, hosts, job, workers string
	var coordinator bool
	var validFor time.Duration
	cmd := &cobra.Command{
		Use:   "certs",
		Short: "Generate a demo CA and a certificate per node for mutual TLS (tests, demos, docker-compose)",
		Long: `Write a cluster CA (ca.pem, ca-key.pem) into --out, or reuse the one already
there, and certificates and keys signed by it: ECDSA P-256, usable as server
and client certificate, valid for the file's name (a DNS name or an IP
address) and for localhost, 127.0.0.1 and ::1.

With --job J, the job's roles: --coordinator writes coordinator.pem, carrying
the URI SAN spiffe://stagecoach/J/coordinator and the CN J/coordinator;
--workers w0,w1 writes w0.pem, w1.pem, carrying spiffe://stagecoach/J/worker/<name>
and the CN J/worker/<name>. Workers accept control calls only from their
job's coordinator, and tensors only from their job's workers. --hosts names
certificates without a role (etcd members; "root" for etcd's administrator).

  stagecoach certs --out certs --hosts etcd-1,root --job train1 --coordinator --workers worker-1,worker-2
  stagecoach worker --tls-cert certs/worker-1.pem --tls-key certs/worker-1-key.pem --tls-ca certs/ca.pem ...

A convenience, not a PKI: the CA key lies next to the certificates and
nothing can be revoked. Keys are written with mode 0600.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var certs []tlsx.Cert
			for _, h := range splitList(hosts) {
				certs = append(certs, tlsx.Cert{File: h})
			}
			ws := splitList(workers)
			switch {
			case job == "" && (coordinator || len(ws) > 0):
				return badInput("--coordinator and --workers need --job")
			case job != "":
				jc, err := tlsx.JobCerts(job, coordinator, ws)
				if err != nil {
					return badInput("%v (--job, --coordinator, --workers)", err)
				}
				certs = append(certs, jc...)
			}
			if len(certs) == 0 {
				return badInput("--hosts needs at least one name (or --job with --coordinator or --workers)")
			}
			if validFor <= 0 {
				return badInput("--valid-for must be positive, got %v", validFor)
			}
			files, err := tlsx.Issue(out, certs, validFor)
			if err != nil {
				return badInput("%v", err)
			}
			for _, f := range files {
				fmt.Fprintln(os.Stdout, f)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&out, "out", "certs", "directory for the CA and the certificates")
	f.StringVar(&hosts, "hosts", "", "comma-separated node names (DNS names or IP addresses), one certificate without a role each")
	f.StringVar(&job, "job", "", "job id whose role certificates --coordinator and --workers issue")
	f.BoolVar(&coordinator, "coordinator", false, "issue the job's coordinator certificate (coordinator.pem)")
	f.StringVar(&workers, "workers", "", "comma-separated worker names, one worker certificate of the job each (<name>.pem)")
	f.DurationVar(&validFor, "valid-for", tlsx.DefaultValidity, "how long the certificates (and a new CA) are valid")
	return cmd
}

// splitList splits a comma-separated flag, dropping blanks.
func splitList(s string) []string {
	var out []string
	for _, h := range strings.Split(s, ",") {
		if h = strings.TrimSpace(h); h != "" {
			out = append(out, h)
		}
	}
	return out
}
