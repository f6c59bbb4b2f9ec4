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
	var out, hosts string
	var validFor time.Duration
	cmd := &cobra.Command{
		Use:   "certs",
		Short: "Generate a demo CA and a certificate per node for mutual TLS (tests, demos, docker-compose)",
		Long: `Write a cluster CA (ca.pem, ca-key.pem) into --out, or reuse the one already
there, and for every name in --hosts a certificate and key (<name>.pem,
<name>-key.pem) signed by it: ECDSA P-256, usable as server and client
certificate, valid for the name (a DNS name or an IP address) and for
localhost, 127.0.0.1 and ::1. Give every node the files of its name:

  stagecoach certs --out certs --hosts etcd-1,coordinator-1,worker-1,worker-2
  stagecoach worker --tls-cert certs/worker-1.pem --tls-key certs/worker-1-key.pem --tls-ca certs/ca.pem ...

A convenience, not a PKI: the CA key lies next to the certificates and
nothing can be revoked. Keys are written with mode 0600.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var names []string
			for _, h := range strings.Split(hosts, ",") {
				if h = strings.TrimSpace(h); h != "" {
					names = append(names, h)
				}
			}
			if len(names) == 0 {
				return badInput("--hosts needs at least one name")
			}
			if validFor <= 0 {
				return badInput("--valid-for must be positive, got %v", validFor)
			}
			files, err := tlsx.Generate(out, names, validFor)
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
	f.StringVar(&hosts, "hosts", "", "comma-separated node names (DNS names or IP addresses), one certificate each (required)")
	f.DurationVar(&validFor, "valid-for", tlsx.DefaultValidity, "how long the certificates (and a new CA) are valid")
	_ = cmd.MarkFlagRequired("hosts")
	return cmd
}
