package main

import (
	"fmt"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
	"go.etcd.io/etcd/server/v3/embed"

	"stagecoach/internal/etcdx"
)

func init() { rootCmd.AddCommand(newEtcdCmd()) }

func newEtcdCmd() *cobra.Command {
	cfg := embed.NewConfig()
	var lcurls, acurls, lpurls, apurls string
	cmd := &cobra.Command{
		Use:   "etcd",
		Short: "Run one member of a real etcd cluster (embedded etcd, etcd's own flag names)",
		Long: `Run one etcd member inside this binary, for deployments where no etcd image or
package is available (docker compose). The flags are etcd's own, with its
defaults; a three-member cluster looks like:

  stagecoach etcd --name e1 --data-dir /data/e1 \
    --listen-client-urls http://0.0.0.0:2379 --advertise-client-urls http://e1:2379 \
    --listen-peer-urls http://0.0.0.0:2380 --initial-advertise-peer-urls http://e1:2380 \
    --initial-cluster e1=http://e1:2380,e2=http://e2:2380,e3=http://e3:2380 \
    --initial-cluster-token stagecoach --initial-cluster-state new

TLS takes etcd's flags too: --cert-file, --key-file, --trusted-ca-file and
--client-cert-auth for clients, --peer-cert-file, --peer-key-file,
--peer-trusted-ca-file and --peer-client-cert-auth between members, with
https:// URLs (an http:// URL beside a certificate is refused rather than
served in plaintext). ` + "`stagecoach certs`" + ` makes a demo CA and certificates.
With TLS and --client-cert-auth, ` + "`stagecoach etcd init-auth`" + ` then creates a
job's users and roles and turns etcd authentication on.

On a busy host raise --heartbeat-interval and --election-timeout (etcd's
defaults, 100 and 1000 ms, depose a leader starved for a second; compose
uses 250 and 2500). SIGTERM stops the member cleanly.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			for _, u := range []struct {
				flag, val string
				dst       *[]url.URL
			}{
				{"listen-client-urls", lcurls, &cfg.ListenClientUrls}, {"advertise-client-urls", acurls, &cfg.AdvertiseClientUrls},
				{"listen-peer-urls", lpurls, &cfg.ListenPeerUrls}, {"initial-advertise-peer-urls", apurls, &cfg.AdvertisePeerUrls},
			} {
				if u.val == "" {
					continue
				}
				urls, err := parseURLs(u.val)
				if err != nil {
					return badInput("--%s: %v", u.flag, err)
				}
				*u.dst = urls
			}
			if err := checkTLSSchemes(cfg); err != nil {
				return err
			}
			if !cmd.Flags().Changed("initial-cluster") {
				cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
			}
			if cfg.Dir == "" {
				cfg.Dir = cfg.Name + ".etcd"
			}
			if err := cfg.Validate(); err != nil {
				return badInput("%v", err)
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			e, err := etcdx.StartMember(ctx, cfg, 0)
			if err != nil {
				return err
			}
			defer e.Close()
			fmt.Fprintf(os.Stderr, "etcd member %s serving clients on %s (data %s)\n", cfg.Name, strings.Join(e.Endpoints(), ","), cfg.Dir)
			select {
			case <-ctx.Done():
				return nil
			case err := <-e.Err():
				return fmt.Errorf("etcd member %s: %w", cfg.Name, err)
			}
		},
	}
	cmd.AddCommand(newEtcdInitAuthCmd())
	f := cmd.Flags()
	f.StringVar(&cfg.Name, "name", cfg.Name, "human-readable name for this member")
	f.StringVar(&cfg.Dir, "data-dir", "", "path to the data directory (default <name>.etcd)")
	f.StringVar(&lcurls, "listen-client-urls", "", "URLs to listen on for client traffic (default http://localhost:2379)")
	f.StringVar(&acurls, "advertise-client-urls", "", "client URLs advertised to the rest of the cluster (default http://localhost:2379)")
	f.StringVar(&lpurls, "listen-peer-urls", "", "URLs to listen on for peer traffic (default http://localhost:2380)")
	f.StringVar(&apurls, "initial-advertise-peer-urls", "", "peer URLs advertised to the rest of the cluster (default http://localhost:2380)")
	f.StringVar(&cfg.InitialCluster, "initial-cluster", "", "initial cluster configuration for bootstrapping, name=peerURL,... (default <name>=<advertised peer URL>)")
	f.StringVar(&cfg.ClusterState, "initial-cluster-state", cfg.ClusterState, "initial cluster state: new or existing")
	f.StringVar(&cfg.InitialClusterToken, "initial-cluster-token", cfg.InitialClusterToken, "initial cluster token for bootstrapping")
	f.UintVar(&cfg.TickMs, "heartbeat-interval", cfg.TickMs, "time (in milliseconds) of a heartbeat interval; raise it with --election-timeout on a busy host")
	f.UintVar(&cfg.ElectionMs, "election-timeout", cfg.ElectionMs, "time (in milliseconds) for an election to timeout: a member starved this long calls an election")
	f.StringVar(&cfg.LogLevel, "log-level", "warn", "log level: debug, info, warn, error, panic or fatal")
	f.StringVar(&cfg.AutoCompactionMode, "auto-compaction-mode", "revision", "interpret auto-compaction-retention as periodic (a duration) or revision (a count)")
	f.StringVar(&cfg.AutoCompactionRetention, "auto-compaction-retention", "1000", "auto compaction retention (0 disables)")
	f.StringVar(&cfg.ClientTLSInfo.CertFile, "cert-file", "", "path to the client server TLS cert file")
	f.StringVar(&cfg.ClientTLSInfo.KeyFile, "key-file", "", "path to the client server TLS key file")
	f.StringVar(&cfg.ClientTLSInfo.TrustedCAFile, "trusted-ca-file", "", "path to the client server TLS trusted CA cert file")
	f.BoolVar(&cfg.ClientTLSInfo.ClientCertAuth, "client-cert-auth", false, "enable client cert authentication (refuse clients without a certificate of --trusted-ca-file)")
	f.StringVar(&cfg.PeerTLSInfo.CertFile, "peer-cert-file", "", "path to the peer server TLS cert file")
	f.StringVar(&cfg.PeerTLSInfo.KeyFile, "peer-key-file", "", "path to the peer server TLS key file")
	f.StringVar(&cfg.PeerTLSInfo.TrustedCAFile, "peer-trusted-ca-file", "", "path to the peer server TLS trusted CA file")
	f.BoolVar(&cfg.PeerTLSInfo.ClientCertAuth, "peer-client-cert-auth", false, "enable peer client cert authentication")
	return cmd
}

// checkTLSSchemes refuses a certificate beside http:// URLs: etcd would
// log a warning and serve plaintext.
func checkTLSSchemes(cfg *embed.Config) error {
	for _, g := range []struct {
		certFlag, urlFlag string
		cert              string
		urls              []url.URL
	}{
		{"--cert-file", "--listen-client-urls", cfg.ClientTLSInfo.CertFile, cfg.ListenClientUrls},
		{"--cert-file", "--advertise-client-urls", cfg.ClientTLSInfo.CertFile, cfg.AdvertiseClientUrls},
		{"--peer-cert-file", "--listen-peer-urls", cfg.PeerTLSInfo.CertFile, cfg.ListenPeerUrls},
		{"--peer-cert-file", "--initial-advertise-peer-urls", cfg.PeerTLSInfo.CertFile, cfg.AdvertisePeerUrls},
	} {
		if g.cert == "" {
			continue
		}
		for _, u := range g.urls {
			if u.Scheme == "http" {
				return badInput("%s is set but %s has %s: use https:// (etcd would serve it in plaintext)", g.certFlag, g.urlFlag, u.String())
			}
		}
	}
	return nil
}

// parseURLs parses a comma-separated URL list as etcd's flags take it.
func parseURLs(s string) ([]url.URL, error) {
	var out []url.URL
	for _, p := range strings.Split(s, ",") {
		p = strings.TrimSpace(p)
		if p == "" {
			continue
		}
		u, err := url.Parse(p)
		if err != nil {
			return nil, err
		}
		if u.Scheme != "http" && u.Scheme != "https" && u.Scheme != "unix" && u.Scheme != "unixs" {
			return nil, fmt.Errorf("URL %q: scheme must be http, https, unix or unixs", p)
		}
		if u.Host == "" {
			return nil, fmt.Errorf("URL %q has no host:port", p)
		}
		out = append(out, *u)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no URLs in %q", s)
	}
	return out, nil
}
