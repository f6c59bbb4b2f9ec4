package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"strconv"

	"stagecoach/coordinator"
	"stagecoach/internal/etcdx"
	"stagecoach/internal/jobview"
)

// liveServer is the coordinator's live page while it runs.
type liveServer struct {
	live *jobview.Live
	srv  *jobview.Server
	cli  interface{ Close() error }
}

// startLive serves job's live page on addr, reading etcd at endpoints
// over its own client. With tc the page is served over HTTPS and asks
// for a client certificate of the cluster CA.
func startLive(ctx context.Context, addr, job string, endpoints []string, tc *tls.Config) (*liveServer, error) {
	keys, err := etcdx.NewKeys(job)
	if err != nil {
		return nil, err
	}
	cli, err := etcdx.DialTLS(ctx, endpoints, 0, tc)
	if err != nil {
		return nil, err
	}
	live := jobview.NewLive(cli, keys)
	srv, err := jobview.Serve(addr, live, tc)
	if err != nil {
		cli.Close()
		return nil, err
	}
	if tc == nil && !loopback(srv.Addr()) {
		slog.Warn("the live page is served without TLS on a non-loopback address: anyone who can reach "+srv.Addr()+" sees the job",
			"http_addr", srv.Addr())
	}
	return &liveServer{live: live, srv: srv, cli: cli}, nil
}

// step records a committed step's timeline.
func (l *liveServer) step(r coordinator.StepReport) {
	if l == nil {
		return
	}
	acts := make([]jobview.WorkerAction, len(r.Timeline))
	for i, a := range r.Timeline {
		acts[i] = jobview.WorkerAction{Worker: a.Worker, TimedAction: jobview.TimedAction{Action: a.Action, Stage: a.Stage, StartS: a.StartS, EndS: a.EndS}}
	}
	l.live.SetTimeline(r.Step, acts)
}

func (l *liveServer) close() {
	if l == nil {
		return
	}
	l.srv.Close()
	l.cli.Close()
}

// loopback reports whether addr's host is a loopback address.
func loopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	ip := net.ParseIP(host)
	return host == "localhost" || ip != nil && ip.IsLoopback()
}

// checkHTTPAddr checks --http-addr before anything starts.
func checkHTTPAddr(addr string) error {
	if addr == "" {
		return nil
	}
	_, port, err := net.SplitHostPort(addr)
	if err == nil {
		var n int
		if n, err = strconv.Atoi(port); err == nil && (n < 0 || n > 65535) {
			err = fmt.Errorf("port %d out of range", n)
		}
	}
	if err != nil {
		return badInput("--http-addr %q: want HOST:PORT (e.g. 127.0.0.1:8080): %v", addr, err)
	}
	return nil
}
