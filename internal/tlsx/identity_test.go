package tlsx

import (
	"context"
	"crypto/x509"
	"errors"
	"net"
	"net/url"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// Issued role certificates carry the URI SAN and the CN of the
// convention, keep their host SANs, and parse back to the identity.
func TestIssueIdentities(t *testing.T) {
	dir := t.TempDir()
	certs, err := JobCerts("job-1", true, []string{"w0", "worker-2"})
	if err != nil {
		t.Fatal(err)
	}
	certs = append(certs, Cert{File: "etcd"}, Cert{File: RootCN})
	if _, err := Issue(dir, certs, time.Hour); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		file, uri, cn string
		id            Identity
	}{
		{"coordinator", "spiffe://stagecoach/job-1/coordinator", "job-1/coordinator", Identity{Job: "job-1", Role: RoleCoordinator}},
		{"w0", "spiffe://stagecoach/job-1/worker/w0", "job-1/worker/w0", Identity{Job: "job-1", Role: RoleWorker, Name: "w0"}},
		{"worker-2", "spiffe://stagecoach/job-1/worker/worker-2", "job-1/worker/worker-2", Worker("job-1", "worker-2")},
	} {
		c, err := Load(FilesFor(dir, tc.file))
		if err != nil {
			t.Fatal(err)
		}
		leaf := c.Certificates[0].Leaf
		if len(leaf.URIs) != 1 || leaf.URIs[0].String() != tc.uri || leaf.Subject.CommonName != tc.cn {
			t.Errorf("%s: URIs %v, CN %q; want %s, %q", tc.file, leaf.URIs, leaf.Subject.CommonName, tc.uri, tc.cn)
		}
		if len(leaf.DNSNames) == 0 || leaf.DNSNames[0] != tc.file {
			t.Errorf("%s: DNS SANs %v lack the host", tc.file, leaf.DNSNames)
		}
		id, err := IdentityOf(leaf)
		if err != nil || id != tc.id {
			t.Errorf("%s: IdentityOf = %+v, %v; want %+v", tc.file, id, err, tc.id)
		}
	}
	for _, file := range []string{"etcd", RootCN} {
		c, err := Load(FilesFor(dir, file))
		if err != nil {
			t.Fatal(err)
		}
		leaf := c.Certificates[0].Leaf
		if leaf.Subject.CommonName != file || len(leaf.URIs) != 0 {
			t.Errorf("%s: CN %q, URIs %v; want CN %q and no role", file, leaf.Subject.CommonName, leaf.URIs, file)
		}
		if _, err := IdentityOf(leaf); !errors.Is(err, ErrNoIdentity) {
			t.Errorf("%s: IdentityOf error %v, want ErrNoIdentity", file, err)
		}
	}
	for _, bad := range []struct {
		job     string
		coord   bool
		workers []string
		want    string
	}{
		{"a/b", true, nil, `job id "a/b"`},
		{"", true, nil, `job id ""`},
		{"j", false, []string{"w/0"}, `worker name "w/0"`},
		{"j", false, []string{".."}, "reserved"},
		{"j", false, nil, "no role"},
	} {
		if _, err := JobCerts(bad.job, bad.coord, bad.workers); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("JobCerts(%q, %v, %q): error %v, want %q", bad.job, bad.coord, bad.workers, err, bad.want)
		}
	}
	// A worker named like the coordinator's file collides, and says so.
	certs, err = JobCerts("j", true, []string{"coordinator"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Issue(t.TempDir(), certs, 0); err == nil || !strings.Contains(err.Error(), "given twice") {
		t.Errorf("colliding files: %v", err)
	}
}

func TestParseIdentityURIErrors(t *testing.T) {
	for _, tc := range []struct{ uri, want string }{
		{"spiffe://stagecoach/j", "want path /<job>/coordinator or /<job>/worker/<name>"},
		{"spiffe://stagecoach/j/coordinator/x", "want path"},
		{"spiffe://stagecoach/j/worker", "want path"},
		{"spiffe://stagecoach/j/worker/a/b", "want path"},
		{"spiffe://stagecoach/j/admin", "want path"},
		{"spiffe://stagecoach//coordinator", `job id ""`},
		{"spiffe://stagecoach/j%20k/coordinator", `character ' '`},
		{"spiffe://stagecoach/j/worker/..", "reserved"},
		{"spiffe://other/j/coordinator", "want spiffe://stagecoach/"},
		{"spiffe://stagecoach/j/coordinator?x=1", "want only a path"},
	} {
		u, err := url.Parse(tc.uri)
		if err != nil {
			t.Fatal(err)
		}
		id, err := ParseIdentityURI(u)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %+v, %v; want an error saying %q", tc.uri, id, err, tc.want)
		}
	}
	two := &x509.Certificate{URIs: []*url.URL{Coordinator("j").URI(), Worker("j", "w").URI()}}
	if _, err := IdentityOf(two); err == nil || !strings.Contains(err.Error(), "two stagecoach roles") {
		t.Errorf("two roles: %v", err)
	}
	// Other URI SANs are ignored.
	mixed := &x509.Certificate{URIs: []*url.URL{{Scheme: "https", Host: "example.org"}, Worker("j", "w").URI()}}
	if id, err := IdentityOf(mixed); err != nil || id != Worker("j", "w") {
		t.Errorf("mixed URIs: %+v, %v", id, err)
	}
}

// PeerIdentity reads the role of the certificate a real gRPC client
// presented over mutual TLS, and reports ErrNoCertificate over plaintext.
func TestPeerIdentity(t *testing.T) {
	dir := t.TempDir()
	certs, err := JobCerts("j", true, []string{"w0"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Issue(dir, append(certs, Cert{File: "probe"}), 0); err != nil {
		t.Fatal(err)
	}
	load := func(file string) Files { return FilesFor(dir, file) }
	serve := func(t *testing.T, files Files) (string, chan error, chan Identity) {
		var opt grpc.ServerOption = grpc.EmptyServerOption{}
		if files.Enabled() {
			c, err := Load(files)
			if err != nil {
				t.Fatal(err)
			}
			opt = ServerOption(c)
		}
		errs, ids := make(chan error, 1), make(chan Identity, 1)
		s := grpc.NewServer(opt, grpc.UnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			id, err := PeerIdentity(ctx)
			errs <- err
			ids <- id
			return h(ctx, req)
		}))
		healthpb.RegisterHealthServer(s, health.NewServer())
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		go func() { _ = s.Serve(l) }()
		t.Cleanup(s.Stop)
		return l.Addr().String(), errs, ids
	}
	call := func(t *testing.T, addr string, files Files) {
		c, err := Load(files)
		if err != nil {
			t.Fatal(err)
		}
		conn, err := grpc.NewClient(addr, DialOption(c))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if _, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
			t.Fatal(err)
		}
	}

	addr, errs, ids := serve(t, load("w0"))
	for _, tc := range []struct {
		file string
		want Identity
		err  error
	}{
		{"coordinator", Coordinator("j"), nil},
		{"w0", Worker("j", "w0"), nil},
		{"probe", Identity{}, ErrNoIdentity},
	} {
		call(t, addr, load(tc.file))
		err, id := <-errs, <-ids
		if id != tc.want || !errors.Is(err, tc.err) {
			t.Errorf("%s: PeerIdentity = %+v, %v; want %+v, %v", tc.file, id, err, tc.want, tc.err)
		}
	}

	plain, errs, _ := serve(t, Files{})
	call(t, plain, Files{})
	if err := <-errs; !errors.Is(err, ErrNoCertificate) {
		t.Errorf("plaintext: PeerIdentity error %v, want ErrNoCertificate", err)
	}
}
