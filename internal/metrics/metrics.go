// Package metrics owns Stagecoach's Prometheus metrics: their names,
// units and help text, the per-process registry they are kept in, and
// the HTTP endpoint that serves them (/metrics) beside a health check
// (/healthz).
//
// Every metric is named stagecoach_<role>_<what>_<unit> (counters end in
// _total). Each process builds its own registry with NewRegistry instead
// of using the client library's global one, so tests and several
// components in one process never collide. The coordinator's and the
// worker's instruments (Coordinator, Worker) are safe to use through a
// nil pointer, which records nothing: library code calls them
// unconditionally and a process without --metrics-addr passes nil.
package metrics

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// NewRegistry returns an empty per-process registry holding the Go
// runtime and process collectors (go_*, process_*).
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// RegisterLease exposes the process's lease counters (etcdx's
// LeaseRenewalFailures and LeasesLost, passed in so this package needs no
// etcd client):
//
//	stagecoach_lease_renewal_failures_total  keepalives that ended while the lease was wanted
//	stagecoach_lease_lost_total              leases found gone (expired, revoked or unconfirmed past their TTL)
func RegisterLease(reg prometheus.Registerer, failures, lost func() uint64) {
	reg.MustRegister(
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "stagecoach_lease_renewal_failures_total",
			Help: "etcd lease keepalives that ended while the lease was still wanted (a failed or dropped renewal); the lease is then kept alive again if etcd still holds it.",
		}, func() float64 { return float64(failures()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "stagecoach_lease_lost_total",
			Help: "etcd leases of this process found gone for good (expired, revoked, or unconfirmed for longer than their TTL).",
		}, func() float64 { return float64(lost()) }),
	)
}

// RegisterIgnored exposes the etcd records the process ignored because
// their writer could not have been legitimate (etcdx's Ignored, passed in
// so this package needs no etcd client), one series per kind:
//
//	stagecoach_etcd_records_ignored_total{kind}  member, iteration, commit
func RegisterIgnored(reg prometheus.Registerer, kinds []string, count func(kind string) uint64) {
	for _, k := range kinds {
		reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name:        "stagecoach_etcd_records_ignored_total",
			Help:        "etcd records this process read and ignored as not written by their legitimate writer (a forged or malformed worker registration, iteration or commit record).",
			ConstLabels: prometheus.Labels{"kind": k},
		}, func() float64 { return float64(count(k)) }))
	}
}

// Server serves one registry over HTTP.
type Server struct {
	srv  *http.Server
	lis  net.Listener
	done chan struct{}
}

// Serve listens on addr (host:port; port 0 picks one) and serves, until
// Close:
//
//	/metrics  the registry in the Prometheus text format
//	/healthz  200 "ok" while health returns nil, else 503 with its error
//	          (a nil health is always healthy)
func Serve(addr string, reg *prometheus.Registry, health func() error) (*Server, error) {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics: listen on %s: %w", addr, err)
	}
	s := &Server{lis: lis, done: make(chan struct{}), srv: &http.Server{
		Handler:           Handler(reg, health),
		ReadHeaderTimeout: 5 * time.Second,
	}}
	go func() {
		defer close(s.done)
		_ = s.srv.Serve(lis)
	}()
	return s, nil
}

// Handler is the mux Serve serves: /metrics and /healthz.
func Handler(reg *prometheus.Registry, health func() error) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if health != nil {
			if err := health(); err != nil {
				w.WriteHeader(http.StatusServiceUnavailable)
				fmt.Fprintf(w, "unhealthy: %v\n", err)
				return
			}
		}
		fmt.Fprintln(w, "ok")
	})
	return mux
}

// Addr is the bound address.
func (s *Server) Addr() string { return s.lis.Addr().String() }

// Close stops serving, giving requests in flight a second to finish.
func (s *Server) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	err := s.srv.Shutdown(ctx)
	if errors.Is(err, context.DeadlineExceeded) {
		err = s.srv.Close()
	}
	<-s.done
	return err
}
