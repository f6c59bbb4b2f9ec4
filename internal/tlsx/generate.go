package tlsx

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"time"
)

// File names Generate writes into its directory.
const (
	CAFile    = "ca.pem"
	CAKeyFile = "ca-key.pem"
)

// DefaultValidity is how long generated certificates are valid.
const DefaultValidity = 365 * 24 * time.Hour

// FilesFor names host's files as Generate writes them into dir:
// dir/<host>.pem, dir/<host>-key.pem and dir/ca.pem.
func FilesFor(dir, host string) Files {
	return Files{Cert: filepath.Join(dir, host+".pem"), Key: filepath.Join(dir, host+"-key.pem"), CA: filepath.Join(dir, CAFile)}
}

var hostRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._:-]*$`)

// Cert is one certificate Issue writes.
type Cert struct {
	// File names its files, <File>.pem and <File>-key.pem, and is the
	// DNS name or IP address it is valid for besides localhost,
	// 127.0.0.1 and ::1.
	File string
	// ID, when set, is the role it carries: the identity's URI SAN, and
	// its Path as the Subject CN. Without, the CN is File (an etcd
	// server's certificate, or RootCN for etcd's administrator).
	ID *Identity
}

// JobCerts are the certificates of job's roles: with coordinator, one
// for the coordinator (file "coordinator"), and one per worker named
// after it. Every coordinator of the job (a leader and its standbys)
// may share the coordinator's.
func JobCerts(job string, coordinator bool, workers []string) ([]Cert, error) {
	var certs []Cert
	add := func(file string, id Identity) error {
		if err := id.Validate(); err != nil {
			return err
		}
		certs = append(certs, Cert{File: file, ID: &id})
		return nil
	}
	if coordinator {
		if err := add("coordinator", Coordinator(job)); err != nil {
			return nil, err
		}
	}
	for _, w := range workers {
		if err := add(w, Worker(job, w)); err != nil {
			return nil, err
		}
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("tlsx: job %q: no role to issue a certificate for (want the coordinator or a worker)", job)
	}
	return certs, nil
}

// Generate issues a certificate without a role for every host (Issue
// with Cert{File: host}).
func Generate(dir string, hosts []string, validFor time.Duration) ([]string, error) {
	certs := make([]Cert, len(hosts))
	for i, h := range hosts {
		certs[i] = Cert{File: h}
	}
	return Issue(dir, certs, validFor)
}

// Issue writes a cluster CA (ca.pem, ca-key.pem) into dir, or reuses the
// one already there, and for every cert a certificate and key
// (<File>.pem, <File>-key.pem) signed by it: ECDSA P-256, valid for
// validFor (DefaultValidity when 0), usable as both server and client
// certificate, with File (a DNS name, or an IP address) and localhost,
// 127.0.0.1 and ::1 as subject alternative names, and the role of ID if
// set. Keys are written with mode 0600. It returns the files written.
//
// This is a convenience for tests, demos and docker-compose: the CA key
// lies next to the certificates it signs and nothing can be revoked. Use a
// real PKI for anything else (issuing the same URI SANs and CNs).
func Issue(dir string, certs []Cert, validFor time.Duration) ([]string, error) {
	if len(certs) == 0 {
		return nil, errors.New("tlsx: no hosts to issue certificates for")
	}
	seen := map[string]bool{}
	for _, c := range certs {
		h := c.File
		switch {
		case !hostRE.MatchString(h):
			return nil, fmt.Errorf("tlsx: host %q: want a DNS name or an IP address (letters, digits, '.', '-', '_', ':')", h)
		case h == "ca" || h == "ca-key":
			return nil, fmt.Errorf("tlsx: host %q would overwrite the CA's files", h)
		case seen[h]:
			return nil, fmt.Errorf("tlsx: host %q given twice", h)
		}
		if c.ID != nil {
			if err := c.ID.Validate(); err != nil {
				return nil, fmt.Errorf("tlsx: certificate %s: %w", h, err)
			}
		}
		seen[h] = true
	}
	if validFor == 0 {
		validFor = DefaultValidity
	}
	if validFor < 0 {
		return nil, fmt.Errorf("tlsx: validity %v is negative", validFor)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("tlsx: %w", err)
	}
	var written []string
	ca, err := loadAuthority(dir)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	if ca == nil {
		if ca, err = newAuthority(now.Add(-time.Hour), now.Add(validFor)); err != nil {
			return nil, err
		}
		if err := ca.write(dir); err != nil {
			return nil, err
		}
		written = append(written, filepath.Join(dir, CAFile), filepath.Join(dir, CAKeyFile))
	}
	for _, c := range certs {
		certPEM, keyPEM, err := ca.issue(c.File, c.ID, now.Add(-time.Hour), now.Add(validFor))
		if err != nil {
			return nil, err
		}
		f := FilesFor(dir, c.File)
		if err := writeFile(f.Cert, certPEM, 0o644); err != nil {
			return nil, err
		}
		if err := writeFile(f.Key, keyPEM, 0o600); err != nil {
			return nil, err
		}
		written = append(written, f.Cert, f.Key)
	}
	return written, nil
}

// authority is a CA that signs node certificates.
type authority struct {
	cert *x509.Certificate
	key  crypto.Signer
}

func newAuthority(notBefore, notAfter time.Time) (*authority, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("tlsx: CA key: %w", err)
	}
	sn := serial()
	tmpl := &x509.Certificate{
		SerialNumber: sn,
		// The serial in the name tells one generated CA from another
		// in handshake errors.
		Subject:               pkix.Name{CommonName: "stagecoach cluster CA " + fmt.Sprintf("%032x", sn)[:8], Organization: []string{"stagecoach"}},
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("tlsx: CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("tlsx: CA certificate: %w", err)
	}
	return &authority{cert: cert, key: key}, nil
}

// loadAuthority reads dir's CA, or returns nil when dir has none.
func loadAuthority(dir string) (*authority, error) {
	certPath, keyPath := filepath.Join(dir, CAFile), filepath.Join(dir, CAKeyFile)
	_, errCert := os.Stat(certPath)
	_, errKey := os.Stat(keyPath)
	switch {
	case errors.Is(errCert, os.ErrNotExist) && errors.Is(errKey, os.ErrNotExist):
		return nil, nil
	case errCert != nil || errKey != nil:
		return nil, fmt.Errorf("tlsx: %s has only half a CA (%s and %s must both exist, or neither)", dir, CAFile, CAKeyFile)
	}
	certPEM, err := readPEM(certPath, "CA", "CERTIFICATE")
	if err != nil {
		return nil, err
	}
	keyPEM, err := readPEM(keyPath, "CA key", "PRIVATE KEY")
	if err != nil {
		return nil, err
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("tlsx: CA key file %s does not match %s: %w", keyPath, certPath, err)
	}
	cert, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return nil, fmt.Errorf("tlsx: CA file %s: %w", certPath, err)
	}
	if !cert.IsCA {
		return nil, fmt.Errorf("tlsx: CA file %s: %s is not a CA certificate", certPath, describe(cert))
	}
	if err := checkValidity(cert, certPath, time.Now()); err != nil {
		return nil, err
	}
	signer, ok := pair.PrivateKey.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("tlsx: CA key file %s: key cannot sign", keyPath)
	}
	return &authority{cert: cert, key: signer}, nil
}

func (a *authority) write(dir string) error {
	keyDER, err := x509.MarshalPKCS8PrivateKey(a.key)
	if err != nil {
		return fmt.Errorf("tlsx: CA key: %w", err)
	}
	if err := writeFile(filepath.Join(dir, CAKeyFile), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return err
	}
	return writeFile(filepath.Join(dir, CAFile), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: a.cert.Raw}), 0o644)
}

// issue signs a new ECDSA P-256 node certificate for host, carrying id's
// role when id is not nil, and returns it and its key as PEM.
func (a *authority) issue(host string, id *Identity, notBefore, notAfter time.Time) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("tlsx: key for %s: %w", host, err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: host, Organization: []string{"stagecoach"}},
		NotBefore:    notBefore,
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	}
	if id != nil {
		tmpl.Subject.CommonName = id.Path()
		tmpl.URIs = []*url.URL{id.URI()}
	}
	if ip := net.ParseIP(host); ip != nil {
		if !ip.IsLoopback() {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		}
	} else if host != "localhost" {
		tmpl.DNSNames = append([]string{host}, tmpl.DNSNames...)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, a.cert, key.Public(), a.key)
	if err != nil {
		return nil, nil, fmt.Errorf("tlsx: certificate for %s: %w", host, err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("tlsx: key for %s: %w", host, err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), nil
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(err) // crypto/rand does not fail on supported platforms
	}
	return n
}

// writeFile writes b to path with mode perm, also when path exists with
// a wider mode.
func writeFile(path string, b []byte, perm os.FileMode) error {
	if err := os.WriteFile(path, b, perm); err != nil {
		return fmt.Errorf("tlsx: %w", err)
	}
	if err := os.Chmod(path, perm); err != nil {
		return fmt.Errorf("tlsx: %w", err)
	}
	return nil
}
