package main

import (
	"fmt"
	"math"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"stagecoach/internal/tlsx"
)

func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func tlsArgs(f tlsx.Files) []string {
	return []string{"--tls-cert", f.Cert, "--tls-key", f.Key, "--tls-ca", f.CA}
}

// TestCertsAndTLSHealth generates certificates with `stagecoach certs`,
// runs `stagecoach etcd` with etcd's TLS flags and `stagecoach worker`
// with --tls-*, and probes both with `stagecoach health`: answered with a
// certificate of the CA, refused without one.
func TestCertsAndTLSHealth(t *testing.T) {
	dir := t.TempDir()
	certs := filepath.Join(dir, "certs")
	out, errOut, code := runCLI(t, dir, "certs", "--out", certs, "--hosts", "etcd,probe", "--job", "tls", "--workers", "w1")
	if code != 0 || !strings.Contains(out, "ca.pem") || !strings.Contains(out, "w1-key.pem") {
		t.Fatalf("certs: exit %d\n%s%s", code, out, errOut)
	}
	etcdFiles, probe := tlsx.FilesFor(certs, "etcd"), tlsArgs(tlsx.FilesFor(certs, "probe"))

	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	start := func(args ...string) {
		c := exec.Command(exe, args...)
		c.Dir, c.Env = dir, append(os.Environ(), "STAGECOACH_TEST_MAIN=1")
		logf, err := os.Create(filepath.Join(dir, args[0]+".log"))
		if err != nil {
			t.Fatal(err)
		}
		c.Stdout, c.Stderr = logf, logf
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			_ = c.Process.Kill()
			_ = c.Wait()
			logf.Close()
		})
	}
	etcdAddr, peerAddr, workerAddr := freePort(t), freePort(t), freePort(t)
	start("etcd", "--name", "e1", "--data-dir", filepath.Join(dir, "e1"),
		"--listen-client-urls", "https://"+etcdAddr, "--advertise-client-urls", "https://"+etcdAddr,
		"--listen-peer-urls", "https://"+peerAddr, "--initial-advertise-peer-urls", "https://"+peerAddr,
		"--cert-file", etcdFiles.Cert, "--key-file", etcdFiles.Key, "--trusted-ca-file", etcdFiles.CA, "--client-cert-auth",
		"--peer-cert-file", etcdFiles.Cert, "--peer-key-file", etcdFiles.Key, "--peer-trusted-ca-file", etcdFiles.CA, "--peer-client-cert-auth")
	start(append([]string{"worker", "--etcd", etcdAddr, "--job", "tls", "--name", "w1", "--listen", workerAddr,
		"--data-dir", filepath.Join(dir, "w1")}, tlsArgs(tlsx.FilesFor(certs, "w1"))...)...)

	// Wait until both answer a probe with a certificate.
	for _, target := range [][]string{{"--etcd", etcdAddr}, {"--worker", workerAddr}} {
		deadline := time.Now().Add(30 * time.Second)
		for {
			out, errOut, code := runCLI(t, dir, append(append([]string{"health", "--timeout", "1s"}, target...), probe...)...)
			if code == 0 {
				t.Log(strings.TrimSpace(out))
				break
			}
			if time.Now().After(deadline) {
				logs, _ := os.ReadFile(filepath.Join(dir, strings.TrimPrefix(target[0], "--")+".log"))
				t.Fatalf("health %v with a certificate: exit %d: %s\nlog:\n%s", target, code, errOut, logs)
			}
			time.Sleep(200 * time.Millisecond)
		}
		_, errOut, code := runCLI(t, dir, "health", "--timeout", "500ms", target[0], target[1])
		if code != 1 {
			t.Errorf("health %v without a certificate: exit %d, want 1 (%s)", target, code, errOut)
		}
	}
}

// TestUpOverTLS runs `stagecoach up --tls-dir`: etcd, the coordinator and
// the worker processes all talk mutual TLS, etcd checks every process's
// permissions (auth on), and the losses equal `stagecoach train`'s bit
// for bit.
func TestUpOverTLS(t *testing.T) {
	if testing.Short() {
		t.Skip("starts worker processes")
	}
	corpus := upCorpus(t)
	model := tinyModel(corpus, 2, 2, 2)
	dir := t.TempDir()
	want := trainLosses(t, dir, model)
	certs := filepath.Join(dir, "certs")
	out, errOut, code := runCLI(t, dir, append([]string{"up", "--workers", "2", "--ttl", "2", "--out", filepath.Join(dir, "up"), "--tls-dir", certs}, model...)...)
	if code != 0 {
		t.Fatalf("up --tls-dir exited %d: %s", code, errOut)
	}
	got := jsonLosses(t, out)
	if len(got) != len(want) {
		t.Fatalf("up printed %d steps, train %d", len(got), len(want))
	}
	for i := range want {
		if math.Float64bits(got[i]) != math.Float64bits(want[i]) {
			t.Fatalf("losses differ:\n up --tls-dir %v\n train        %v", got, want)
		}
	}
	// ... with etcd authentication on: the same losses under per-job
	// and per-worker etcd permissions.
	if !strings.Contains(errOut, "etcd authentication turned on for job up; users created: root, up/coordinator, up/worker/w0, up/worker/w1") {
		t.Errorf("up --tls-dir did not say it turned etcd auth on:\n%s", errOut)
	}
	if log, err := os.ReadFile(filepath.Join(dir, "up", "workers", "w1.log")); err != nil || !strings.Contains(string(log), "(mutual TLS)") {
		t.Errorf("worker w1 did not serve mutual TLS (%v):\n%s", err, log)
	}
	for _, f := range []string{"ca.pem", "etcd.pem", "coordinator-key.pem", "w0.pem", "w1-key.pem"} {
		if _, err := os.Stat(filepath.Join(certs, f)); err != nil {
			t.Error(err)
		}
	}
}

// TestCertsRoles: `stagecoach certs --job` issues the job's role
// certificates beside role-less ones, all signed by one CA.
func TestCertsRoles(t *testing.T) {
	dir := t.TempDir()
	out, errOut, code := runCLI(t, dir, "certs", "--out", dir, "--hosts", "etcd,root", "--job", "j1", "--coordinator", "--workers", "w0,w1")
	if code != 0 {
		t.Fatalf("certs: exit %d\n%s%s", code, out, errOut)
	}
	for file, want := range map[string]tlsx.Identity{"coordinator": tlsx.Coordinator("j1"), "w0": tlsx.Worker("j1", "w0"), "w1": tlsx.Worker("j1", "w1")} {
		c, err := tlsx.Load(tlsx.FilesFor(dir, file))
		if err != nil {
			t.Fatal(err)
		}
		if id, err := tlsx.IdentityOf(c.Certificates[0].Leaf); err != nil || id != want {
			t.Errorf("%s.pem: %+v, %v; want %+v", file, id, err, want)
		}
	}
	c, err := tlsx.Load(tlsx.FilesFor(dir, "root"))
	if err != nil {
		t.Fatal(err)
	}
	if cn := c.Certificates[0].Leaf.Subject.CommonName; cn != "root" {
		t.Errorf("root.pem has CN %q", cn)
	}
	// A process refuses to start under a certificate of another role:
	// every call it made would be refused.
	for _, tc := range []struct {
		args []string
		want string
	}{
		{append([]string{"worker", "--etcd", "x:1", "--job", "j1", "--name", "w0"}, tlsArgs(tlsx.FilesFor(dir, "coordinator"))...), "carries the role spiffe://stagecoach/j1/coordinator, this process needs spiffe://stagecoach/j1/worker/w0"},
		{append([]string{"worker", "--etcd", "x:1", "--job", "j1", "--name", "w0"}, tlsArgs(tlsx.FilesFor(dir, "w1"))...), "needs spiffe://stagecoach/j1/worker/w0"},
		{append([]string{"coordinator", "--job", "j1"}, tlsArgs(tlsx.FilesFor(dir, "w0"))...), "needs spiffe://stagecoach/j1/coordinator"},
		{append([]string{"coordinator", "--job", "other"}, tlsArgs(tlsx.FilesFor(dir, "coordinator"))...), "needs spiffe://stagecoach/other/coordinator"},
		{append([]string{"coordinator", "--job", "j1"}, tlsArgs(tlsx.FilesFor(dir, "etcd"))...), "no spiffe://stagecoach/ URI SAN"},
	} {
		_, errOut, code := runCLI(t, dir, tc.args...)
		if code != 2 || !strings.Contains(errOut, tc.want) {
			t.Errorf("%v: exit %d, want 2 with %q (%s)", tc.args[:6], code, tc.want, errOut)
		}
	}
}

func TestTLSBadInputExitsTwo(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing.pem")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"certs", "--out", dir, "--hosts", "ca"}, "overwrite the CA"},
		{[]string{"certs", "--out", dir, "--hosts", " , "}, "at least one name"},
		{[]string{"certs", "--out", dir, "--coordinator"}, "need --job"},
		{[]string{"worker", "--etcd", "x:1", "--job", "j", "--name", "w", "--listen", "0.0.0.0:0"}, "--insecure-listen"},
		{[]string{"certs", "--out", dir, "--job", "a/b", "--coordinator"}, `job id "a/b"`},
		{[]string{"certs", "--out", dir, "--job", "j", "--workers", "w0,w 1"}, `worker name "w 1"`},
		{[]string{"worker", "--etcd", "x:1", "--job", "j", "--name", "w", "--tls-cert", missing, "--tls-key", missing, "--tls-ca", missing}, missing + " does not exist"},
		{[]string{"worker", "--etcd", "x:1", "--job", "j", "--name", "w", "--tls-cert", missing}, "missing the key (--tls-key)"},
		{[]string{"coordinator", "--job", "j", "--tls-ca", missing}, "missing the certificate (--tls-cert)"},
		{[]string{"health", "--worker", "x:1", "--tls-key", missing}, "--tls-cert"},
		{[]string{"etcd", "--cert-file", "c.pem", "--key-file", "k.pem", "--listen-client-urls", "http://127.0.0.1:1"}, "use https://"},
	} {
		_, errOut, code := runCLI(t, dir, tc.args...)
		if code != 2 || !strings.Contains(errOut, tc.want) {
			t.Errorf("%v: exit %d, want 2 with %q (%s)", tc.args, code, tc.want, errOut)
		}
	}
}

// TestEtcdInitAuth runs `stagecoach etcd` with TLS and client
// certificates required, turns auth on for a job with `stagecoach etcd
// init-auth` and the root certificate, and checks that a named worker
// registers, a worker not named yet is refused (it stops at once: it may
// not even read the election) until init-auth runs again with its name,
// and only root may run it once auth is on.
func TestEtcdInitAuth(t *testing.T) {
	if testing.Short() {
		t.Skip("starts etcd and worker processes")
	}
	dir := t.TempDir()
	certs := filepath.Join(dir, "certs")
	if out, errOut, code := runCLI(t, dir, "certs", "--out", certs, "--hosts", "etcd,root,probe", "--job", "auth", "--coordinator", "--workers", "w1,w2"); code != 0 {
		t.Fatalf("certs: exit %d\n%s%s", code, out, errOut)
	}
	etcdFiles := tlsx.FilesFor(certs, "etcd")
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	start := func(args ...string) string {
		c := exec.Command(exe, args...)
		c.Dir, c.Env = dir, append(os.Environ(), "STAGECOACH_TEST_MAIN=1")
		n++
		log := filepath.Join(dir, fmt.Sprintf("%s-%d.log", args[0], n))
		logf, err := os.Create(log)
		if err != nil {
			t.Fatal(err)
		}
		c.Stdout, c.Stderr = logf, logf
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			_ = c.Process.Kill()
			_ = c.Wait()
			logf.Close()
		})
		return log
	}
	etcdAddr, peerAddr := freePort(t), freePort(t)
	start("etcd", "--name", "e1", "--data-dir", filepath.Join(dir, "e1"),
		"--listen-client-urls", "https://"+etcdAddr, "--advertise-client-urls", "https://"+etcdAddr,
		"--listen-peer-urls", "https://"+peerAddr, "--initial-advertise-peer-urls", "https://"+peerAddr,
		"--cert-file", etcdFiles.Cert, "--key-file", etcdFiles.Key, "--trusted-ca-file", etcdFiles.CA, "--client-cert-auth",
		"--peer-cert-file", etcdFiles.Cert, "--peer-key-file", etcdFiles.Key, "--peer-trusted-ca-file", etcdFiles.CA, "--peer-client-cert-auth")
	root := tlsArgs(tlsx.FilesFor(certs, "root"))
	initAuth := func(workers string, cert []string) (string, string, int) {
		deadline := time.Now().Add(30 * time.Second)
		for {
			out, errOut, code := runCLI(t, dir, append([]string{"etcd", "init-auth", "--etcd", etcdAddr, "--job", "auth", "--workers", workers}, cert...)...)
			if code == 0 || !strings.Contains(errOut, "does not answer") || time.Now().After(deadline) {
				return out, errOut, code
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	out, errOut, code := initAuth("w1", root)
	if code != 0 || !strings.Contains(out, "etcd authentication turned on for job auth; users created: root, auth/coordinator, auth/worker/w1") {
		t.Fatalf("init-auth: exit %d\n%s%s", code, out, errOut)
	}
	// The etcd health probe needs no permission in any job.
	if out, errOut, code := runCLI(t, dir, append([]string{"health", "--timeout", "2s", "--etcd", etcdAddr}, tlsArgs(tlsx.FilesFor(certs, "probe"))...)...); code != 0 {
		t.Errorf("health --etcd with auth on: exit %d\n%s%s", code, out, errOut)
	}
	worker := func(name string) string {
		return start(append([]string{"worker", "--etcd", etcdAddr, "--job", "auth", "--name", name, "--listen", "127.0.0.1:0",
			"--data-dir", filepath.Join(dir, name)}, tlsArgs(tlsx.FilesFor(certs, name))...)...)
	}
	waitLog := func(log, what string) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			b, _ := os.ReadFile(log)
			if strings.Contains(string(b), what) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s never says %q:\n%s", log, what, b)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	waitLog(worker("w1"), "registered in job auth")
	w2 := worker("w2")
	waitLog(w2, "permission denied")
	if b, _ := os.ReadFile(w2); strings.Contains(string(b), "registered in job auth") {
		t.Fatalf("w2 registered before init-auth named it:\n%s", b)
	}
	t.Log("w2 before init-auth named it: refused")
	// Only root changes users once auth is on.
	if _, errOut, code := initAuth("w2", tlsArgs(tlsx.FilesFor(certs, "coordinator"))); code == 0 || !strings.Contains(errOut, "run this with the root certificate") {
		t.Errorf("init-auth with the coordinator's certificate: exit %d: %s", code, errOut)
	}
	out, errOut, code = initAuth("w1,w2", root)
	if code != 0 || !strings.Contains(out, "etcd authentication was on already for job auth; users created: auth/worker/w2") {
		t.Fatalf("init-auth again: exit %d\n%s%s", code, out, errOut)
	}
	waitLog(worker("w2"), "registered in job auth")
	if _, errOut, code := runCLI(t, dir, "etcd", "init-auth", "--etcd", etcdAddr, "--job", "auth"); code != 2 || !strings.Contains(errOut, "needs --tls-cert") {
		t.Errorf("init-auth without TLS: exit %d: %s", code, errOut)
	}
}

// TestCoordinatorEmbeddedEtcdAuth runs `stagecoach coordinator` with TLS,
// its embedded etcd and --auth-workers, and two `stagecoach worker`
// processes with their role certificates: etcd auth is turned on before
// the workers join, and the job prints `stagecoach train`'s losses bit
// for bit. --auth-workers without TLS is refused.
func TestCoordinatorEmbeddedEtcdAuth(t *testing.T) {
	if testing.Short() {
		t.Skip("starts coordinator and worker processes")
	}
	corpus := upCorpus(t)
	model := tinyModel(corpus, 2, 2, 2)
	dir := t.TempDir()
	want := trainLosses(t, dir, model)
	certs := filepath.Join(dir, "certs")
	if out, errOut, code := runCLI(t, dir, "certs", "--out", certs, "--job", "emb", "--coordinator", "--workers", "w0,w1"); code != 0 {
		t.Fatalf("certs: exit %d\n%s%s", code, out, errOut)
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	etcdAddr := freePort(t)
	var cout, cerr strings.Builder
	co := exec.Command(exe, append(append([]string{"coordinator", "--job", "emb", "--workers", "2", "--ttl", "2", "--out", filepath.Join(dir, "co"),
		"--embed-etcd-url", "https://" + etcdAddr, "--auth-workers", "w0,w1"}, tlsArgs(tlsx.FilesFor(certs, "coordinator"))...), model...)...)
	co.Dir, co.Env = dir, append(os.Environ(), "STAGECOACH_TEST_MAIN=1")
	var mu sync.Mutex
	co.Stdout, co.Stderr = lockedWriter{&mu, &cout}, lockedWriter{&mu, &cerr}
	if err := co.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- co.Wait() }()
	t.Cleanup(func() {
		_ = co.Process.Kill()
		<-done
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		mu.Lock()
		s := cerr.String()
		mu.Unlock()
		if strings.Contains(s, "etcd authentication turned on for job emb; users created: root, emb/coordinator, emb/worker/w0, emb/worker/w1") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the coordinator did not turn etcd auth on:\n%s", s)
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, w := range []string{"w0", "w1"} {
		c := exec.Command(exe, append([]string{"worker", "--etcd", etcdAddr, "--job", "emb", "--name", w, "--ttl", "2",
			"--data-dir", filepath.Join(dir, w), "--checkpoint-root", filepath.Join(dir, "co")}, tlsArgs(tlsx.FilesFor(certs, w))...)...)
		c.Dir, c.Env = dir, append(os.Environ(), "STAGECOACH_TEST_MAIN=1")
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			_ = c.Process.Kill()
			_ = c.Wait()
		})
	}
	select {
	case err := <-done:
		done <- err
		mu.Lock()
		defer mu.Unlock()
		if err != nil {
			t.Fatalf("coordinator: %v\n%s", err, cerr.String())
		}
		got := jsonLosses(t, cout.String())
		if len(got) != len(want) {
			t.Fatalf("coordinator printed %d steps, train %d", len(got), len(want))
		}
		for i := range want {
			if math.Float64bits(got[i]) != math.Float64bits(want[i]) {
				t.Fatalf("losses differ:\n coordinator %v\n train       %v", got, want)
			}
		}
	case <-time.After(60 * time.Second):
		mu.Lock()
		defer mu.Unlock()
		t.Fatalf("the job did not finish in 60 s:\n%s", cerr.String())
	}
	if _, errOut, code := runCLI(t, dir, "coordinator", "--job", "emb", "--auth-workers", "w0"); code != 2 || !strings.Contains(errOut, "--auth-workers sets up the embedded etcd's authentication: it needs TLS") {
		t.Errorf("--auth-workers without TLS: exit %d: %s", code, errOut)
	}
}

// lockedWriter serializes writes to a builder shared with the test.
type lockedWriter struct {
	mu *sync.Mutex
	b  *strings.Builder
}

func (w lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}
