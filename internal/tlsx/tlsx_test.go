package tlsx

import (
	"crypto/tls"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func generate(t *testing.T, hosts ...string) string {
	t.Helper()
	dir := t.TempDir()
	if _, err := Generate(dir, hosts, 0); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestGenerateAndLoad(t *testing.T) {
	dir := generate(t, "w0", "10.1.2.3")
	c, err := Load(FilesFor(dir, "w0"))
	if err != nil {
		t.Fatal(err)
	}
	if c.MinVersion != tls.VersionTLS13 || c.ClientAuth != tls.RequireAndVerifyClientCert || c.RootCAs == nil || c.ClientCAs == nil || len(c.Certificates) != 1 {
		t.Fatalf("config: min version %x, client auth %v, roots %v, client CAs %v, %d certificates", c.MinVersion, c.ClientAuth, c.RootCAs != nil, c.ClientCAs != nil, len(c.Certificates))
	}
	leaf := c.Certificates[0].Leaf
	if !slices.Contains(leaf.DNSNames, "w0") || !slices.Contains(leaf.DNSNames, "localhost") || len(leaf.IPAddresses) != 2 {
		t.Errorf("w0's SANs: DNS %v, IP %v", leaf.DNSNames, leaf.IPAddresses)
	}
	ip, err := Load(FilesFor(dir, "10.1.2.3"))
	if err != nil {
		t.Fatal(err)
	}
	if l := ip.Certificates[0].Leaf; len(l.IPAddresses) != 3 || slices.Contains(l.DNSNames, "10.1.2.3") {
		t.Errorf("an IP host is an IP SAN: DNS %v, IP %v", l.DNSNames, l.IPAddresses)
	}
	for _, f := range []string{"w0-key.pem", CAKeyFile} {
		st, err := os.Stat(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != 0o600 {
			t.Errorf("%s has mode %v, want 0600", f, st.Mode().Perm())
		}
	}
	if c, err := Load(Files{}); c != nil || err != nil {
		t.Errorf("no files: got %v, %v; want plaintext (nil, nil)", c, err)
	}
}

// A second Generate into the same directory reuses the CA: certificates
// issued later verify against the ca.pem handed out earlier.
func TestGenerateReusesCA(t *testing.T) {
	dir := generate(t, "a")
	ca1, _ := os.ReadFile(filepath.Join(dir, CAFile))
	written, err := Generate(dir, []string{"b"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	ca2, _ := os.ReadFile(filepath.Join(dir, CAFile))
	if string(ca1) != string(ca2) || slices.Contains(written, filepath.Join(dir, CAFile)) {
		t.Fatalf("CA rewritten (files written: %v)", written)
	}
	if _, err := Load(FilesFor(dir, "b")); err != nil {
		t.Fatal(err)
	}
	for _, bad := range [][]string{nil, {"ca"}, {"x", "x"}, {"../x"}, {"a b"}} {
		if _, err := Generate(dir, bad, 0); err == nil {
			t.Errorf("Generate(%q) succeeded", bad)
		}
	}
}

// Every broken input is refused with an error naming the file and what is
// wrong with it.
func TestLoadErrors(t *testing.T) {
	dir := generate(t, "w0", "w1")
	other := generate(t, "w0")
	w0, w1 := FilesFor(dir, "w0"), FilesFor(dir, "w1")
	write := func(name, content string) string {
		p := filepath.Join(t.TempDir(), name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	notPEM := write("junk.pem", "hello, I am not a certificate\n")
	ca, err := loadAuthority(dir)
	if err != nil {
		t.Fatal(err)
	}
	expCert, expKey, err := ca.issue("old", nil, time.Now().Add(-48*time.Hour), time.Now().Add(-24*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	expired := Files{Cert: write("old.pem", string(expCert)), Key: write("old-key.pem", string(expKey)), CA: w0.CA}
	futCert, futKey, err := ca.issue("new", nil, time.Now().Add(24*time.Hour), time.Now().Add(48*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	future := Files{Cert: write("new.pem", string(futCert)), Key: write("new-key.pem", string(futKey)), CA: w0.CA}
	missing := filepath.Join(dir, "nope.pem")

	for _, tc := range []struct {
		name  string
		files Files
		want  []string
	}{
		{"partial flags", Files{Cert: w0.Cert}, []string{"missing the key (--tls-key) and the CA (--tls-ca)"}},
		{"missing cert", Files{Cert: missing, Key: w0.Key, CA: w0.CA}, []string{"certificate file", missing, "does not exist"}},
		{"missing CA", Files{Cert: w0.Cert, Key: w0.Key, CA: missing}, []string{"CA file", missing, "does not exist"}},
		{"cert not PEM", Files{Cert: notPEM, Key: w0.Key, CA: w0.CA}, []string{"certificate file", notPEM, "is not PEM"}},
		{"key not PEM", Files{Cert: w0.Cert, Key: notPEM, CA: w0.CA}, []string{"key file", notPEM, "is not PEM"}},
		{"swapped", Files{Cert: w0.Key, Key: w0.Cert, CA: w0.CA}, []string{"certificate file", w0.Key, "holds a PRIVATE KEY block", "swapped?"}},
		{"key of another cert", Files{Cert: w0.Cert, Key: w1.Key, CA: w0.CA}, []string{"key file", w1.Key, "does not match certificate file", w0.Cert}},
		{"expired", expired, []string{expired.Cert, `CN "old"`, "expired at"}},
		{"not yet valid", future, []string{future.Cert, "not valid before"}},
		{"node cert as CA", Files{Cert: w0.Cert, Key: w0.Key, CA: w1.Cert}, []string{"CA file", w1.Cert, "is not a CA certificate"}},
		{"other CA", Files{Cert: w0.Cert, Key: w0.Key, CA: FilesFor(other, "w0").CA}, []string{w0.Cert, "is not signed by the CA in", FilesFor(other, "w0").CA}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Load(tc.files)
			if err == nil {
				t.Fatalf("loaded %+v", c)
			}
			t.Log(err)
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
		})
	}
}

// Server forces client certificate verification whatever it is given.
func TestServerRequiresClientCerts(t *testing.T) {
	dir := generate(t, "w0")
	c, err := Load(FilesFor(dir, "w0"))
	if err != nil {
		t.Fatal(err)
	}
	lax := c.Clone()
	lax.ClientAuth, lax.ClientCAs, lax.MinVersion = tls.NoClientCert, nil, tls.VersionTLS12
	s := Server(lax)
	if s.ClientAuth != tls.RequireAndVerifyClientCert || s.ClientCAs != c.RootCAs || s.MinVersion != tls.VersionTLS13 {
		t.Fatalf("Server: client auth %v, client CAs from roots %v, min version %x", s.ClientAuth, s.ClientCAs == c.RootCAs, s.MinVersion)
	}
	if lax.ClientAuth != tls.NoClientCert {
		t.Error("Server changed its argument")
	}
	if Server(nil) != nil {
		t.Error("Server(nil) is not nil")
	}
}
