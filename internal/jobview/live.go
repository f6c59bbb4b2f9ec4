package jobview

import (
	"context"
	"crypto/tls"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"sort"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"stagecoach/internal/etcdx"
	"stagecoach/internal/tlsx"
)

//go:embed web
var webFS embed.FS

// PageLosses is how many recent losses the live page plots.
const PageLosses = 1000

// minRead is how long a snapshot is served again before etcd is read
// anew, so that many open pages cost etcd one read each period.
const minRead = 250 * time.Millisecond

// Live serves a job's live page: GET / is the page (plain HTML, CSS and
// JavaScript embedded in the binary, no external resources), GET
// /api/job the snapshot it polls as JSON. It reads etcd on demand and
// holds the last step's timeline, which only the leading coordinator
// knows (SetTimeline). Safe for concurrent use.
type Live struct {
	cli  *clientv3.Client
	keys etcdx.Keys
	mux  *http.ServeMux

	mu       sync.Mutex
	timeline *Timeline
	last     *Snapshot
	lastAt   time.Time
}

// NewLive serves job k read through cli.
func NewLive(cli *clientv3.Client, k etcdx.Keys) *Live {
	l := &Live{cli: cli, keys: k, mux: http.NewServeMux()}
	static, _ := fs.Sub(webFS, "web")
	l.mux.Handle("GET /", http.FileServerFS(static))
	l.mux.HandleFunc("GET /api/job", l.serveJob)
	return l
}

// SetTimeline records the last step's actions (worker, action, start
// and end in seconds from the step's first action).
func (l *Live) SetTimeline(step int64, actions []WorkerAction) {
	t := &Timeline{Step: step}
	byWorker := map[string]int{}
	for _, a := range actions {
		i, ok := byWorker[a.Worker]
		if !ok {
			i = len(t.Workers)
			byWorker[a.Worker] = i
			t.Workers = append(t.Workers, WorkerTimeline{Worker: a.Worker})
		}
		t.Workers[i].Actions = append(t.Workers[i].Actions, a.TimedAction)
		t.SpanS = max(t.SpanS, a.EndS)
	}
	sort.Slice(t.Workers, func(i, j int) bool { return t.Workers[i].Worker < t.Workers[j].Worker })
	for _, w := range t.Workers {
		sort.SliceStable(w.Actions, func(i, j int) bool { return w.Actions[i].StartS < w.Actions[j].StartS })
	}
	l.mu.Lock()
	l.timeline = t
	l.mu.Unlock()
}

// WorkerAction is a TimedAction and the worker that ran it.
type WorkerAction struct {
	Worker string
	TimedAction
}

// Snapshot reads the job (at most every 250 ms; concurrent callers
// share a read) with the recent losses and the last timeline.
func (l *Live) Snapshot(ctx context.Context) (*Snapshot, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.last != nil && time.Since(l.lastAt) < minRead {
		return l.withTimeline(l.last), nil
	}
	s, err := Read(ctx, NewEtcdSource(l.cli), l.keys, Options{Losses: PageLosses})
	if err != nil {
		return nil, err
	}
	l.last, l.lastAt = s, time.Now()
	return l.withTimeline(s), nil
}

func (l *Live) withTimeline(s *Snapshot) *Snapshot {
	c := *s
	c.Timeline = l.timeline
	return &c
}

func (l *Live) serveJob(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	w.Header().Set("Cache-Control", "no-store")
	s, err := l.Snapshot(ctx)
	if err != nil {
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(s)
}

// ServeHTTP implements http.Handler.
func (l *Live) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Security-Policy", "default-src 'self'")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	l.mux.ServeHTTP(w, r)
}

// Server is a running live page server.
type Server struct {
	srv    *http.Server
	lis    net.Listener
	scheme string
	done   chan struct{}
}

// Serve listens on addr (host:port; port 0 picks one) and serves h. With
// tc (tlsx.Load) it serves HTTPS with the node's certificate and
// requires a client certificate signed by the cluster CA, like every
// other hop of a TLS cluster; nil serves plain HTTP.
func Serve(addr string, h http.Handler, tc *tls.Config) (*Server, error) {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("jobview: listen on %s: %w", addr, err)
	}
	s := &Server{lis: lis, scheme: "http", done: make(chan struct{}),
		srv: &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}}
	if tc != nil {
		s.scheme = "https"
		s.srv.TLSConfig = tlsx.Server(tc)
		lis = tls.NewListener(lis, s.srv.TLSConfig)
	}
	go func() {
		defer close(s.done)
		_ = s.srv.Serve(lis)
	}()
	return s, nil
}

// URL is the page's address (its host as bound).
func (s *Server) URL() string { return s.scheme + "://" + s.lis.Addr().String() + "/" }

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
