package etcdx

import (
	"context"
	"crypto/tls"
	"strings"
	"testing"
	"time"

	"stagecoach/internal/tlsx"
)

// An embedded etcd with client TLS serves a client presenting a
// certificate of its CA and refuses a plaintext client and one without a
// certificate.
func TestEtcdClientTLS(t *testing.T) {
	dir := t.TempDir()
	if _, err := tlsx.Generate(dir, []string{"etcd", "coordinator"}, time.Hour); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	e, err := StartEmbedded(ctx, EmbedConfig{Dir: t.TempDir(), TLS: tlsx.FilesFor(dir, "etcd")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	tc, err := tlsx.Load(tlsx.FilesFor(dir, "coordinator"))
	if err != nil {
		t.Fatal(err)
	}
	cli, err := DialTLS(ctx, e.Endpoints(), 5*time.Second, tc)
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	if _, err := cli.Put(ctx, Root+"tls-test", "ok"); err != nil {
		t.Fatal(err)
	}
	if r, err := cli.Get(ctx, Root+"tls-test"); err != nil || len(r.Kvs) != 1 || string(r.Kvs[0].Value) != "ok" {
		t.Fatalf("read back over TLS: %v %v", r, err)
	}

	// Refusals cost the dial timeout: keep it short.
	const short = time.Second
	if c, err := Dial(ctx, e.Endpoints(), short); err == nil {
		c.Close()
		t.Error("a plaintext client was served")
	} else {
		t.Log(err)
	}
	noCert := &tls.Config{RootCAs: tc.RootCAs, MinVersion: tls.VersionTLS13}
	if c, err := DialTLS(ctx, e.Endpoints(), short, noCert); err == nil {
		c.Close()
		t.Error("a client without a certificate was served")
	} else if !strings.Contains(err.Error(), "certificate required") {
		t.Errorf("refusal does not say why: %v", err)
	} else {
		t.Log(err)
	}
	if _, err := DialTLS(ctx, []string{"http://" + e.Endpoints()[0]}, short, tc); err == nil || !strings.Contains(err.Error(), "plaintext (http://) but TLS is on") {
		t.Errorf("an http:// endpoint with TLS on: %v", err)
	}
}
