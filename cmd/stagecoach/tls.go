package main

import (
	"crypto/tls"

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
