package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"stagecoach/internal/etcdx"
	"stagecoach/worker"
)

// TestHealth probes a live etcd and worker (exit 0), then addresses where
// nothing answers (exit 1, within the timeout), as the compose
// healthchecks do.
func TestHealth(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	e, err := etcdx.StartEmbedded(ctx, etcdx.EmbedConfig{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	w, err := worker.New(worker.Config{Name: "w1", Listen: "127.0.0.1:0", Job: "health", DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	addr, err := w.Start()
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop(time.Second)

	etcdAddr := strings.TrimPrefix(e.Endpoints()[0], "http://")
	dir := t.TempDir()
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"health", "--etcd", etcdAddr}, 0, "leader"},
		{[]string{"health", "--worker", addr}, 0, "worker w1"},
		{[]string{"health", "--etcd", "127.0.0.1:1", "--timeout", "500ms"}, 1, "health: etcd"},
		{[]string{"health", "--worker", "127.0.0.1:1", "--timeout", "500ms"}, 1, "health: worker"},
		{[]string{"health"}, 2, "exactly one"},
	} {
		start := time.Now()
		out, errOut, code := runCLI(t, dir, tc.args...)
		if code != tc.code || !strings.Contains(out+errOut, tc.want) {
			t.Errorf("%v: exit %d, want %d with %q; stdout %q, stderr %q", tc.args, code, tc.code, tc.want, out, errOut)
		}
		if d := time.Since(start); d > 10*time.Second {
			t.Errorf("%v took %v: a healthcheck probe must give up within its timeout", tc.args, d)
		}
	}
}
