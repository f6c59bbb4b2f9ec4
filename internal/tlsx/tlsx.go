// Package tlsx owns Stagecoach's optional mutual TLS: it loads a node's
// certificate, private key and the cluster CA from PEM files into one
// *tls.Config that serves (client certificates required and verified
// against the CA) and dials (the node's certificate presented, the peer's
// verified against the CA), turns such a config into gRPC server and dial
// options (nil meaning plaintext), reads the role a certificate carries in
// a job (Identity: spiffe://stagecoach/<job>/coordinator or
// .../worker/<name> as a URI SAN; IdentityOf, PeerIdentity), and
// generates a small CA with node and role certificates for tests, demos
// and docker-compose (Issue, JobCerts; `stagecoach certs`), which is a
// convenience, not a replacement for a real PKI.
//
// Every node of a cluster (coordinator, worker, etcd member, health probe)
// uses the same shape of configuration: TLS 1.3 at least, one certificate
// that is both a server and a client certificate, one CA that signs them
// all. A peer without a certificate signed by that CA is refused during
// the handshake.
package tlsx

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
)

// Files names a node's PEM files. All three empty means plaintext; a
// partial set is an error.
type Files struct {
	// Cert is the node's certificate (it may be followed by
	// intermediates); Key its private key; CA the cluster CA
	// certificate(s) that sign every node.
	Cert, Key, CA string
}

// Enabled reports whether any file is named.
func (f Files) Enabled() bool { return f.Cert != "" || f.Key != "" || f.CA != "" }

// Load reads f into the node's mutual TLS configuration: Certificates is
// the node's certificate, RootCAs and ClientCAs are the CA, ClientAuth is
// RequireAndVerifyClientCert and the minimum version is TLS 1.3. The same
// config serves (ServerOption) and dials (DialOption, etcd's client).
// With no file named it returns nil, nil: plaintext. Errors name the file
// and what is wrong with it.
func Load(f Files) (*tls.Config, error) {
	if !f.Enabled() {
		return nil, nil
	}
	var missing []string
	for _, m := range []struct{ flag, path string }{{"certificate (--tls-cert)", f.Cert}, {"key (--tls-key)", f.Key}, {"CA (--tls-ca)", f.CA}} {
		if m.path == "" {
			missing = append(missing, m.flag)
		}
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("tlsx: TLS needs a certificate, a key and a CA file; missing the %s", strings.Join(missing, " and the "))
	}
	pool, err := loadCA(f.CA)
	if err != nil {
		return nil, err
	}
	certPEM, err := readPEM(f.Cert, "certificate", "CERTIFICATE")
	if err != nil {
		return nil, err
	}
	keyPEM, err := readPEM(f.Key, "key", "PRIVATE KEY")
	if err != nil {
		return nil, err
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("tlsx: key file %s does not match certificate file %s: %w", f.Key, f.Cert, err)
	}
	leaf := pair.Leaf
	if leaf == nil {
		if leaf, err = x509.ParseCertificate(pair.Certificate[0]); err != nil {
			return nil, fmt.Errorf("tlsx: certificate file %s: %w", f.Cert, err)
		}
	}
	if err := checkValidity(leaf, f.Cert, time.Now()); err != nil {
		return nil, err
	}
	inter := x509.NewCertPool()
	for _, der := range pair.Certificate[1:] {
		if c, err := x509.ParseCertificate(der); err == nil {
			inter.AddCert(c)
		}
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return nil, fmt.Errorf("tlsx: certificate file %s (%s) is not signed by the CA in %s: %w", f.Cert, describe(leaf), f.CA, err)
	}
	return &tls.Config{
		Certificates: []tls.Certificate{pair},
		RootCAs:      pool,
		ClientCAs:    pool,
		ClientAuth:   tls.RequireAndVerifyClientCert,
		MinVersion:   tls.VersionTLS13,
	}, nil
}

// Server is c as a server's configuration: client certificates required
// and verified against c's ClientCAs (RootCAs when ClientCAs is unset),
// TLS 1.3 at least. nil stays nil.
func Server(c *tls.Config) *tls.Config {
	if c == nil {
		return nil
	}
	s := c.Clone()
	s.ClientAuth = tls.RequireAndVerifyClientCert
	if s.ClientCAs == nil {
		s.ClientCAs = s.RootCAs
	}
	if s.MinVersion < tls.VersionTLS13 {
		s.MinVersion = tls.VersionTLS13
	}
	return s
}

// ServerOption is the gRPC server option for c: mutual TLS (Server(c)),
// or plaintext when c is nil.
func ServerOption(c *tls.Config) grpc.ServerOption {
	if c == nil {
		return grpc.EmptyServerOption{}
	}
	return grpc.Creds(credentials.NewTLS(Server(c)))
}

// DialOption is the gRPC dial option for c: TLS presenting c's
// certificate and verifying the server against c's RootCAs (the server
// name is the dialled host), or plaintext when c is nil.
func DialOption(c *tls.Config) grpc.DialOption {
	if c == nil {
		return grpc.WithTransportCredentials(insecure.NewCredentials())
	}
	d := c.Clone()
	if d.MinVersion < tls.VersionTLS13 {
		d.MinVersion = tls.VersionTLS13
	}
	return grpc.WithTransportCredentials(credentials.NewTLS(d))
}

// readPEM reads a PEM file and checks that its first block is of the kind
// wanted (a suffix match, so "PRIVATE KEY" accepts EC and RSA keys).
func readPEM(path, what, kind string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("tlsx: %s file %s does not exist", what, path)
		}
		return nil, fmt.Errorf("tlsx: %s file: %w", what, err)
	}
	block, _ := pem.Decode(b)
	if block == nil {
		return nil, fmt.Errorf("tlsx: %s file %s is not PEM (no -----BEGIN %s----- block)", what, path, kind)
	}
	if !strings.HasSuffix(block.Type, kind) {
		hint := ""
		if (what == "key" && block.Type == "CERTIFICATE") || (what == "certificate" && strings.HasSuffix(block.Type, "PRIVATE KEY")) {
			hint = " (certificate and key swapped?)"
		}
		return nil, fmt.Errorf("tlsx: %s file %s holds a %s block, want %s%s", what, path, block.Type, kind, hint)
	}
	return b, nil
}

// loadCA reads the CA file into a pool; every certificate in it must be a
// CA.
func loadCA(path string) (*x509.CertPool, error) {
	b, err := readPEM(path, "CA", "CERTIFICATE")
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	now := time.Now()
	for n := 0; ; n++ {
		var block *pem.Block
		block, b = pem.Decode(b)
		if block == nil {
			if n == 0 {
				return nil, fmt.Errorf("tlsx: CA file %s holds no certificate", path)
			}
			return pool, nil
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("tlsx: CA file %s: certificate %d: %w", path, n+1, err)
		}
		if !c.IsCA {
			return nil, fmt.Errorf("tlsx: CA file %s: %s is not a CA certificate (a node certificate given as --tls-ca?)", path, describe(c))
		}
		if err := checkValidity(c, path, now); err != nil {
			return nil, err
		}
		pool.AddCert(c)
	}
}

func checkValidity(c *x509.Certificate, path string, now time.Time) error {
	switch {
	case now.After(c.NotAfter):
		return fmt.Errorf("tlsx: certificate in %s (%s) expired at %s", path, describe(c), c.NotAfter.UTC().Format(time.RFC3339))
	case now.Before(c.NotBefore):
		return fmt.Errorf("tlsx: certificate in %s (%s) is not valid before %s", path, describe(c), c.NotBefore.UTC().Format(time.RFC3339))
	}
	return nil
}

func describe(c *x509.Certificate) string {
	if c.Subject.CommonName != "" {
		return fmt.Sprintf("CN %q", c.Subject.CommonName)
	}
	return "serial " + c.SerialNumber.String()
}
