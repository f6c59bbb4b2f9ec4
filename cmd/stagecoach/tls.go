package main

import (
	"crypto/tls"
	"net"

	"github.com/spf13/pflag"

	"stagecoach/internal/tlsx"
)

// tlsFlags are the mutual TLS flags of every command that serves or dials
// gRPC or etcd. None given: plaintext.
type tlsFlags struct{ files tlsx.Files }

func (t *tlsFlags) register(f *pflag.FlagSet) {
	f.StringVar(&t.files.Cert, "tls-cert", "", "this node's certificate (PEM); with --tls-key and --tls-ca turns on mutual TLS for gRPC and etcd ('stagecoach certs' makes a demo set)")
	f.StringVar(&t.files.Key, "tls-key", "", "this node's private key (PEM)")
	f.StringVar(&t.files.CA, "tls-ca", "", "the cluster CA certificate (PEM): peers must present a certificate it signed")
}

// load reads the files; nil means plaintext. A bad file is bad input.
func (t *tlsFlags) load() (*tls.Config, error) {
	c, err := tlsx.Load(t.files)
	if err != nil {
		return nil, badInput("%v", err)
	}
	return c, nil
}

// checkRole refuses a certificate that does not carry want's role: the
// workers would refuse every call it makes.
func checkRole(c *tls.Config, want tlsx.Identity) error {
	if c == nil {
		return nil
	}
	id, err := tlsx.IdentityOf(c.Certificates[0].Leaf)
	if err != nil {
		return badInput("--tls-cert: %v; issue one for %s (stagecoach certs --job)", err, want.URI())
	}
	if id != want {
		return badInput("--tls-cert carries the role %s, this process needs %s (stagecoach certs --job)", id.URI(), want.URI())
	}
	return nil
}

// checkPlaintextListen refuses a non-loopback listen address without TLS
// unless insecure allows it: nothing would authenticate the callers.
func checkPlaintextListen(c *tls.Config, addr string, insecure bool) error {
	if c != nil || insecure {
		return nil
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return badInput("--listen %q: want HOST:PORT: %v", addr, err)
	}
	if host == "localhost" {
		return nil
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
		return nil
	}
	return badInput("--listen %s without TLS would let anyone who reaches it control the job: listen on loopback, give --tls-cert/--tls-key/--tls-ca, or pass --insecure-listen", addr)
}
