package worker_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math"
	"math/big"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"stagecoach/internal/tlsx"
	"stagecoach/internal/transport"
	"stagecoach/model"
	pb "stagecoach/proto"
	"stagecoach/scheduler"
	"stagecoach/worker"
	"stagecoach/worker/workertest"
)

// clusterTLS generates a CA and certificates for hosts in a temporary
// directory and loads each host's config. "coordinator" carries testJob's
// coordinator role, w<i> the role of testJob's worker w<i>, any other
// host none.
func clusterTLS(t *testing.T, hosts ...string) map[string]*tls.Config {
	t.Helper()
	dir := t.TempDir()
	var certs []tlsx.Cert
	for _, h := range hosts {
		c := tlsx.Cert{File: h}
		switch {
		case h == "coordinator":
			id := tlsx.Coordinator(testJob)
			c.ID = &id
		case strings.HasPrefix(h, "w"):
			id := tlsx.Worker(testJob, h)
			c.ID = &id
		}
		certs = append(certs, c)
	}
	if _, err := tlsx.Issue(dir, certs, time.Hour); err != nil {
		t.Fatal(err)
	}
	out := map[string]*tls.Config{}
	for _, h := range hosts {
		c, err := tlsx.Load(tlsx.FilesFor(dir, h))
		if err != nil {
			t.Fatal(err)
		}
		out[h] = c
	}
	return out
}

// selfSigned is a certificate for 127.0.0.1 that signs itself.
func selfSigned(t *testing.T) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "intruder"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth}, DNSNames: []string{"localhost"}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// status asks the worker at addr for its Status over a connection dialled
// with opt.
func statusWith(t *testing.T, addr string, opt grpc.DialOption) (*pb.StatusResponse, error) {
	t.Helper()
	conn, err := grpc.NewClient(addr, opt)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return pb.NewWorkerClient(conn).Status(ctx, &pb.StatusRequest{})
}

// With TLS on, a worker answers a client presenting a certificate of its
// CA and refuses every other caller during the handshake.
func TestWorkerMutualTLS(t *testing.T) {
	certs := clusterTLS(t, "w0", "coordinator")
	foreign := clusterTLS(t, "coordinator")["coordinator"]
	c := workertest.Start(t, 1, testJob, func(_ int, cfg *worker.Config) { cfg.TLS = certs["w0"] })
	addr := c.Addrs[0]

	st, err := statusWith(t, addr, tlsx.DialOption(certs["coordinator"]))
	if err != nil {
		t.Fatalf("client with a CA-signed certificate: %v", err)
	}
	if st.GetName() != "w0" {
		t.Errorf("status names %q, want w0", st.GetName())
	}

	ca := certs["coordinator"].RootCAs
	// client presents cert, if any, whatever CAs the server asks for (a
	// Go client otherwise withholds a certificate the server's CA list
	// does not name).
	client := func(cert ...tls.Certificate) *tls.Config {
		c := &tls.Config{RootCAs: ca, MinVersion: tls.VersionTLS13, NextProtos: []string{"h2"}}
		if len(cert) > 0 {
			c.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &cert[0], nil }
		}
		return c
	}
	for _, tc := range []struct {
		name string
		tls  *tls.Config // nil: plaintext
		want string      // why the handshake fails
	}{
		{"plaintext", nil, ""},
		{"no certificate", client(), "remote error: tls: certificate required"},
		{"self-signed certificate", client(selfSigned(t)), "remote error: tls: unknown certificate authority"},
		{"certificate of another CA", client(foreign.Certificates[0]), "remote error: tls: unknown certificate authority"},
		// The client checks the server too: a worker whose certificate
		// is not of the client's CA is not trusted.
		{"server of another CA", foreign, "certificate signed by unknown authority"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := statusWith(t, addr, tlsx.DialOption(tc.tls))
			if status.Code(err) != codes.Unavailable {
				t.Fatalf("Status RPC: got %v, want Unavailable", err)
			}
			t.Log(err)
			if tc.tls == nil {
				return
			}
			// gRPC's error may be a broken pipe when the server hangs up
			// before the client reads its alert; a bare handshake
			// followed by a read always gets the reason.
			if err := handshake(addr, tc.tls); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("handshake: got %v, want %q", err, tc.want)
			}
		})
	}
}

// handshake dials addr with c and reads: under TLS 1.3 a server refusing
// the client's certificate says so in an alert after the client's side of
// the handshake is done.
func handshake(addr string, c *tls.Config) error {
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, c)
	if err != nil {
		return err
	}
	defer conn.Close()
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err = conn.Read(make([]byte, 1))
	return err
}

// Two TLS workers train a 2-stage GPipe job: the coordinator's commands
// and the activations and gradients between the workers all travel over
// mutual TLS, and the losses stay bit-identical to the single-process
// trainer's. A plaintext tensor stream to a TLS worker is refused.
func TestPipelineOverMutualTLS(t *testing.T) {
	certs := clusterTLS(t, "w0", "w1", "coordinator")
	cfg := trainConfig(4, 4, 2)
	ref, err := model.NewTrainer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	plan, err := scheduler.Generate("gpipe", scheduler.Spec{Stages: 2, Microbatches: 4, Layers: 4, Samples: 2})
	if err != nil {
		t.Fatal(err)
	}
	c := workertest.Start(t, 2, testJob, func(i int, cfg *worker.Config) { cfg.TLS = certs[[]string{"w0", "w1"}[i]] })
	d := &workertest.Driver{Clients: workertest.DialTLS(t, c.Addrs, certs["coordinator"]), Peers: c.Addrs, Names: []string{"w0", "w1"}, Plan: plan, Train: ref.Cfg,
		Fence: &pb.Fence{Job: testJob, LeaderRev: 7, Epoch: 1}}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := d.Configure(ctx, nil); err != nil {
		t.Fatal(err)
	}
	for step := 1; step <= 2; step++ {
		got, want := stepBoth(t, ctx, d, ref, 11, step, cfg.Microbatches, cfg.MicrobatchSize)
		if math.Float64bits(got.Loss) != math.Float64bits(want.Loss) || math.Float64bits(got.GradNorm) != math.Float64bits(want.GradNorm) {
			t.Errorf("step %d: loss %v norm %v, trainer %v %v", step, got.Loss, got.GradNorm, want.Loss, want.GradNorm)
		}
	}

	o, err := transport.NewOutbox(transport.Options{}, c.Addrs, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	hdr := &pb.TensorHeader{Fence: d.Fence, Iteration: 3, Kind: pb.TensorKind_TENSOR_KIND_ACTIVATION, Shape: []int32{1}}
	if err := o.Send(ctx, 1, hdr, make([]byte, 4)); err != nil {
		t.Fatal(err)
	}
	if err := o.Flush(ctx); status.Code(err) != codes.Unavailable {
		t.Errorf("plaintext tensor to a TLS worker: got %v, want Unavailable", err)
	}
}
