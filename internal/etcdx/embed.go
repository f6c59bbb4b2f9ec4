package etcdx

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"sync"
	"syscall"
	"time"

	"go.etcd.io/etcd/server/v3/embed"

	"stagecoach/internal/tlsx"
)

// EmbedConfig configures an embedded single-node etcd.
type EmbedConfig struct {
	// Dir is the data directory (required). Reusing a directory resumes
	// the previous server's data.
	Dir string
	// Name is the member name; default "stagecoach".
	Name string
	// ClientURL and PeerURL are the listen URLs; empty picks free
	// loopback ports.
	ClientURL, PeerURL string
	// LogLevel is etcd's log level; default "fatal", because a normal
	// Close logs error lines at lower levels.
	LogLevel string
	// StartTimeout bounds how long Start waits for the server to be ready;
	// default 30 s.
	StartTimeout time.Duration
	// TLS, when set, serves clients over https and refuses a client
	// without a certificate signed by TLS.CA (etcd's --cert-file,
	// --key-file, --trusted-ca-file and --client-cert-auth); the peer port
	// uses the same files the same way. http:// URLs become https://.
	// Clients dial with DialTLS.
	TLS tlsx.Files
}

// Embedded is a running embedded etcd. Close it exactly as often as you
// like: embed.Etcd.Close panics when called twice, so Embedded guards it.
type Embedded struct {
	etcd      *embed.Etcd
	endpoints []string
	closeOnce sync.Once
}

// StartEmbedded starts a single-node etcd on loopback with auto-compaction
// on (revision mode, keeping the last 1000 revisions) and waits until it
// serves.
func StartEmbedded(ctx context.Context, c EmbedConfig) (*Embedded, error) {
	if c.Dir == "" {
		return nil, errors.New("etcdx: embedded etcd needs a data directory")
	}
	if c.Name == "" {
		c.Name = "stagecoach"
	}
	if c.LogLevel == "" {
		c.LogLevel = "fatal"
	}
	if c.StartTimeout == 0 {
		c.StartTimeout = 30 * time.Second
	}
	// Ports picked here are free when picked but may be taken by another
	// process before etcd binds them: then pick again (etcd binds before
	// it writes anything to the data directory).
	pickClient, pickPeer := c.ClientURL == "", c.PeerURL == ""
	for attempt := 1; ; attempt++ {
		var err error
		if pickClient {
			if c.ClientURL, err = pickURL(); err != nil {
				return nil, err
			}
		}
		if pickPeer {
			if c.PeerURL, err = pickURL(); err != nil {
				return nil, err
			}
		}
		e, err := startEmbedded(ctx, c)
		if err == nil || !(pickClient || pickPeer) || attempt == maxPortAttempts || !addrInUse(err) {
			return e, err
		}
	}
}

// maxPortAttempts bounds StartEmbedded's tries with freshly picked ports.
const maxPortAttempts = 5

// addrInUse reports a failure to bind a port another process holds.
func addrInUse(err error) bool {
	return errors.Is(err, syscall.EADDRINUSE) || strings.Contains(err.Error(), "address already in use")
}

func startEmbedded(ctx context.Context, c EmbedConfig) (*Embedded, error) {
	if c.TLS.Enabled() {
		// Check the files here, with tlsx's errors, rather than in
		// etcd's logs.
		if _, err := tlsx.Load(c.TLS); err != nil {
			return nil, err
		}
		c.ClientURL, c.PeerURL = toHTTPS(c.ClientURL), toHTTPS(c.PeerURL)
	}
	cu, err := url.Parse(c.ClientURL)
	if err != nil {
		return nil, fmt.Errorf("etcdx: client URL %q: %w", c.ClientURL, err)
	}
	pu, err := url.Parse(c.PeerURL)
	if err != nil {
		return nil, fmt.Errorf("etcdx: peer URL %q: %w", c.PeerURL, err)
	}
	cfg := embed.NewConfig()
	cfg.Name = c.Name
	cfg.Dir = c.Dir
	cfg.LogLevel = c.LogLevel
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{*cu}, []url.URL{*cu}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{*pu}, []url.URL{*pu}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.AutoCompactionMode = "revision"
	cfg.AutoCompactionRetention = "1000"
	if c.TLS.Enabled() {
		ci := &cfg.ClientTLSInfo
		ci.CertFile, ci.KeyFile, ci.TrustedCAFile, ci.ClientCertAuth = c.TLS.Cert, c.TLS.Key, c.TLS.CA, true
		cfg.PeerTLSInfo = *ci
		cfg.TlsMinVersion = "TLS1.3"
	}
	return startConfigured(ctx, cfg, c.StartTimeout)
}

// toHTTPS turns an http:// URL into https://.
func toHTTPS(u string) string {
	if rest, ok := strings.CutPrefix(u, "http://"); ok {
		return "https://" + rest
	}
	return u
}

// StartMember starts an etcd member from a full embed configuration (as
// `stagecoach etcd` builds it from etcd's own flags) and waits until it
// serves.
func StartMember(ctx context.Context, cfg *embed.Config, timeout time.Duration) (*Embedded, error) {
	if timeout == 0 {
		timeout = 60 * time.Second
	}
	return startConfigured(ctx, cfg, timeout)
}

func startConfigured(ctx context.Context, cfg *embed.Config, timeout time.Duration) (*Embedded, error) {
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, fmt.Errorf("etcdx: start etcd in %s: %w", cfg.Dir, err)
	}
	m := &Embedded{etcd: e}
	for _, l := range e.Clients {
		m.endpoints = append(m.endpoints, l.Addr().String())
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-e.Server.ReadyNotify():
		return m, nil
	case err := <-e.Err():
		m.Close()
		return nil, fmt.Errorf("etcdx: etcd in %s failed while starting: %w", cfg.Dir, err)
	case <-t.C:
		m.Close()
		return nil, fmt.Errorf("etcdx: etcd in %s not ready after %v", cfg.Dir, timeout)
	case <-ctx.Done():
		m.Close()
		return nil, ctx.Err()
	}
}

// Endpoints are the host:port addresses clients dial.
func (m *Embedded) Endpoints() []string { return append([]string(nil), m.endpoints...) }

// Err reports fatal server errors.
func (m *Embedded) Err() <-chan error { return m.etcd.Err() }

// Close stops the server; later calls do nothing.
func (m *Embedded) Close() { m.closeOnce.Do(m.etcd.Close) }

// freeLoopbackURL picks a free loopback port. Another process may grab it
// before etcd binds; StartEmbedded then fails and the caller may retry.
// pickURL picks the ports StartEmbedded was not given (tests replace it).
var pickURL = freeLoopbackURL

func freeLoopbackURL() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("etcdx: pick a loopback port: %w", err)
	}
	addr := l.Addr().String()
	l.Close()
	return "http://" + addr, nil
}
