package worker

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"stagecoach/compute"
	"stagecoach/internal/confine"
	"stagecoach/internal/metrics"
	"stagecoach/internal/tlsx"
	pb "stagecoach/proto"
)

// Server is one worker: a gRPC server implementing the Worker service (for
// the leader coordinator) and the Peer service (for other workers).
//
// Control RPCs (Configure, RunIteration, Step, checkpoints) run one at a
// time: they own the stages. RunIteration executes the worker's
// program from the RPC's own goroutine, the single owner of the
// scheduler.Machine; receive goroutines only hand tensors over through the
// mailbox.
type Server struct {
	pb.UnimplementedWorkerServer
	pb.UnimplementedPeerServer

	cfg  Config
	mbox *mailbox
	// root confines checkpoint directories (Config.CheckpointRoot).
	root confine.Root

	// control serialises the control RPCs.
	control sync.Mutex

	mu        sync.Mutex // guards the fields below
	leaderRev int64      // highest leader revision admitted
	epoch     int64      // plan epoch of job
	job       *job       // nil until configured
	applied   int64      // last optimizer step applied (iteration number)
	// backendErr is the compute backend's last failure, until an
	// iteration succeeds again (noteBackend).
	backendErr error

	// health is the standard health service: NOT_SERVING while
	// backendErr is set.
	health *health.Server

	srv *grpc.Server
	lis net.Listener

	// metrics receives the worker's Prometheus metrics; nil records none.
	metrics atomic.Pointer[metrics.Worker]

	// emu is the compute-speed emulation (Config.EmulateSpeed).
	emu emulation
}

// New validates cfg and builds a worker. It does not listen yet: call
// Start, or Serve with a listener of your own.
func New(cfg Config) (*Server, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	root, err := confine.New(cfg.CheckpointRoot)
	if err != nil {
		return nil, fmt.Errorf("worker: config: %w", err)
	}
	s := &Server{cfg: cfg, root: root, mbox: newMailbox(mailboxLimits{bytes: cfg.MailboxBytes, futureBytes: cfg.NextEpochBytes,
		futureTensors: cfg.NextEpochTensors, peerBytes: cfg.PeerBytes, peerStreams: cfg.PeerStreams})}
	s.emu = newEmulation(cfg)
	opts := append(cfg.Transport.ServerOptions(), grpc.MaxRecvMsgSize(max(cfg.MaxControlBytes, cfg.Transport.ChunkBytes+(64<<10))))
	opts = append(opts, tlsx.ServerOption(cfg.TLS),
		grpc.ChainUnaryInterceptor(s.authorizeUnary, s.measureRPC),
		grpc.ChainStreamInterceptor(s.authorizeStream))
	s.srv = grpc.NewServer(opts...)
	pb.RegisterWorkerServer(s.srv, s)
	pb.RegisterPeerServer(s.srv, s)
	// Probes (stagecoach health, container healthchecks) ask the
	// standard health service, which any certificate of the CA may call;
	// Status is the coordinator's.
	s.health = health.NewServer()
	healthpb.RegisterHealthServer(s.srv, s.health)
	return s, nil
}

// SetMetrics makes the worker record its Prometheus metrics in m (nil:
// none): every executed action, the tensors it sends, takes and
// refuses, and the control RPCs it serves.
func (s *Server) SetMetrics(m *metrics.Worker) { s.metrics.Store(m) }

// Epoch is the plan epoch the worker is configured for (0: none yet),
// for log lines. It takes the worker's state lock, which is never held
// while Config.Logf is called.
func (s *Server) Epoch() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.epoch
}

// measureRPC times every control RPC by method and status code.
func (s *Server) measureRPC(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	m := s.metrics.Load()
	if m == nil {
		return h(ctx, req)
	}
	t0 := time.Now()
	resp, err := h(ctx, req)
	m.RPC(path.Base(info.FullMethod), status.Code(err).String(), time.Since(t0))
	return resp, err
}

// Start listens on Config.Listen and serves in the background. It returns
// the address actually bound (useful with port 0).
func (s *Server) Start() (string, error) {
	lis, err := net.Listen("tcp", s.cfg.Listen)
	if err != nil {
		return "", fmt.Errorf("worker %s: listen: %w", s.cfg.Name, err)
	}
	s.lis = lis
	go func() {
		if err := s.srv.Serve(lis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			s.cfg.Logf("worker %s: serve: %v", s.cfg.Name, err)
		}
	}()
	return lis.Addr().String(), nil
}

// Addr is the bound address after Start.
func (s *Server) Addr() string {
	if s.lis == nil {
		return ""
	}
	return s.lis.Addr().String()
}

// Stop ends the server, waiting up to grace for RPCs in flight, and closes
// peer connections and the stages it holds (not Config.Backend).
func (s *Server) Stop(grace time.Duration) {
	done := make(chan struct{})
	go func() { s.srv.GracefulStop(); close(done) }()
	select {
	case <-done:
	case <-time.After(grace):
		s.srv.Stop()
	}
	s.mu.Lock()
	j := s.job
	s.mu.Unlock()
	if j == nil {
		return
	}
	j.out.Close()
	// A control RPC still running (its client gone, its stage stuck in
	// the backend) owns the stages: leave them to the backend's Close.
	if s.control.TryLock() {
		s.closeStages(j.stages)
		s.control.Unlock()
	}
}

// Run is the worker process: it serves cfg until ctx ends. The CLI calls
// it; registration in etcd is the caller's business.
func Run(ctx context.Context, cfg Config) error {
	s, err := New(cfg)
	if err != nil {
		return err
	}
	addr, err := s.Start()
	if err != nil {
		return err
	}
	s.cfg.Logf("worker %s: serving job %q on %s", s.cfg.Name, s.cfg.Job, addr)
	<-ctx.Done()
	s.Stop(5 * time.Second)
	return nil
}

// refreshTimeout bounds the etcd read a fence the watched leader does
// not explain triggers.
const refreshTimeout = 2 * time.Second

// admitLeader checks a control request's job and leader revision. With a
// LeaderSource the revision must be the current leader's as etcd shows
// it: on a mismatch the election is read again once (the watch may lag
// behind a new leader's first command), then a revision below the
// leader's, or one admitted before whose leader is gone, is a deposed
// leader, and any other a forgery, refused and never adopted.
// Without one (no election: tests), a revision below the highest admitted
// is deposed. The highest admitted revision fences peer tensors.
func (s *Server) admitLeader(ctx context.Context, f *pb.Fence) error {
	if f == nil {
		return ErrNoFence
	}
	if f.GetJob() != s.cfg.Job {
		return fmt.Errorf("%w: %q, this worker serves %q", ErrWrongJob, f.GetJob(), s.cfg.Job)
	}
	rev := f.GetLeaderRev()
	if src := s.cfg.Leader; src != nil {
		cur, _ := src.Changes()
		if rev != cur {
			rctx, cancel := context.WithTimeout(ctx, refreshTimeout)
			var err error
			cur, err = src.Refresh(rctx)
			cancel()
			if err != nil {
				return fmt.Errorf("%w: %v", ErrLeaderUnknown, err)
			}
		}
		if rev != cur || cur == 0 {
			s.mu.Lock()
			seen := s.leaderRev
			s.mu.Unlock()
			// Below the leader, or a leader admitted before and gone
			// since (the election may be empty): deposed. Anything else
			// was never a leader here: forged.
			if rev < cur || (rev > 0 && rev <= seen) {
				return fmt.Errorf("%w: leader revision %d, the election's is %d", ErrDeposed, rev, cur)
			}
			s.metrics.Load().Denied("fence", metrics.DenyFutureLeader)
			return fmt.Errorf("%w: leader revision %d, the election's is %d", ErrFutureLeader, rev, cur)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if rev < s.leaderRev {
		return fmt.Errorf("%w: leader revision %d < %d", ErrDeposed, rev, s.leaderRev)
	}
	s.leaderRev = rev
	return nil
}

// whileLeading returns ctx, ended with ErrDeposed once the election
// names a leader other than the one at revision rev. A leader paused past
// its lease, or cut off from etcd, keeps its connections: without this
// its iteration would hold the control lock, and this worker waiting on
// inputs its peers never got, until the connection dropped, and its
// successor's Configure would wait behind it.
func (s *Server) whileLeading(ctx context.Context, rev int64) (context.Context, context.CancelFunc) {
	src := s.cfg.Leader
	if src == nil {
		return context.WithCancel(ctx)
	}
	lctx, cancel := context.WithCancelCause(ctx)
	go func() {
		for {
			cur, changed := src.Changes()
			if cur != rev {
				cancel(fmt.Errorf("%w: leader revision %d, the election's is %d now", ErrDeposed, rev, cur))
				return
			}
			select {
			case <-changed:
			case <-lctx.Done():
				return
			}
		}
	}()
	return lctx, func() { cancel(nil) }
}

// admit is admitLeader plus the epoch check of every control RPC but
// Configure; it returns the configured job.
func (s *Server) admit(ctx context.Context, f *pb.Fence) (*job, error) {
	if err := s.admitLeader(ctx, f); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.job == nil:
		return nil, fmt.Errorf("%w: no plan yet (epoch %d requested)", ErrNotConfigured, f.GetEpoch())
	case f.GetEpoch() < s.epoch:
		return nil, fmt.Errorf("%w: epoch %d < %d", ErrStaleEpoch, f.GetEpoch(), s.epoch)
	case f.GetEpoch() > s.epoch:
		return nil, fmt.Errorf("%w: epoch %d requested, configured for %d", ErrNotConfigured, f.GetEpoch(), s.epoch)
	}
	return s.job, nil
}

// admitTensor checks a peer tensor's header before its payload is read:
// same job, not from a deposed leader's run, of the current plan epoch
// or the next (nothing later: a worker is configured for an epoch before
// any peer runs it, so only a slow Configure lets a tensor run one epoch
// ahead), with a plausible shape; a current-epoch tensor must also be for
// an iteration that can still run (the next one or, from a peer that
// already stepped, the one after) and be what the plan has the claimed
// sender send this worker. future reports a next-epoch tensor (or any
// tensor before the first Configure), which waits in the bounded
// next-epoch queue and is checked against its plan when taken.
//
// Under mutual TLS a current-epoch tensor's claimed sender must also be
// the caller's certificate (checkSender) before anything else is judged;
// a next-epoch one's is checked at its Configure.
func (s *Server) admitTensor(h *pb.TensorHeader, id tlsx.Identity) (future bool, err error) {
	f := h.GetFence()
	if f == nil {
		return false, ErrNoFence
	}
	s.mu.Lock()
	j, cur, applied, rev := s.job, s.epoch, s.applied, s.leaderRev
	s.mu.Unlock()
	switch {
	case f.GetJob() != s.cfg.Job:
		return false, fmt.Errorf("%w: %q, this worker serves %q", ErrWrongJob, f.GetJob(), s.cfg.Job)
	case f.GetLeaderRev() < rev:
		return false, fmt.Errorf("%w: tensor under leader revision %d < %d", ErrDeposed, f.GetLeaderRev(), rev)
	case f.GetEpoch() < cur:
		return false, fmt.Errorf("%w: tensor from epoch %d < %d, dropped", ErrStaleEpoch, f.GetEpoch(), cur)
	}
	if err := s.checkSender(id, j, h); err != nil {
		return false, err
	}
	if err := checkShape(h); err != nil {
		return false, err
	}
	switch e := f.GetEpoch(); {
	case j == nil:
		return true, nil
	case e == cur+1:
		return true, nil
	case e > cur+1:
		return false, fmt.Errorf("%w: tensor of epoch %d, this worker runs epoch %d and accepts only it and the next", ErrFutureEpoch, e, cur)
	}
	if it := h.GetIteration(); it <= applied || it > applied+2 {
		return false, fmt.Errorf("%w: tensor for iteration %d, step %d is applied: only iterations %d and %d can still run", ErrBadInput, it, applied, applied+1, applied+2)
	}
	return false, j.checkTensor(h)
}

func (s *Server) appliedStep() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.applied
}

func (s *Server) setApplied(n int64) {
	s.mu.Lock()
	s.applied = n
	s.mu.Unlock()
}

// Status implements pb.WorkerServer. It needs no fence (it changes
// nothing), but under mutual TLS only the job's coordinator may call it;
// probes use the health service. After a failure of its compute backend
// the worker answers Unavailable, naming the backend and the failure,
// until an iteration succeeds again: the coordinator, which probes Status
// after any failed iteration, then counts it lost, as if it had died.
func (s *Server) Status(ctx context.Context, _ *pb.StatusRequest) (*pb.StatusResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.backendErr != nil {
		return nil, status.Errorf(codes.Unavailable, "worker %s: %v", s.cfg.Name, s.backendErr)
	}
	r := &pb.StatusResponse{Name: s.cfg.Name, Epoch: s.epoch, AppliedStep: s.applied}
	if s.job != nil {
		for _, st := range s.job.stages {
			r.Stages = append(r.Stages, int32(st.id))
		}
	}
	return r, nil
}

// noteBackend records err when it is a failure of the compute backend
// (compute.ErrBackend): the worker reports itself unhealthy (Status,
// health service) until an iteration succeeds again (backendOK).
func (s *Server) noteBackend(err error) {
	if !errors.Is(err, compute.ErrBackend) {
		return
	}
	s.mu.Lock()
	s.backendErr = fmt.Errorf("compute backend %s failed: %w", s.cfg.Backend.Name(), err)
	s.mu.Unlock()
	s.health.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
}

// backendOK clears a recorded backend failure: the backend has just
// computed a whole iteration.
func (s *Server) backendOK() {
	s.mu.Lock()
	was := s.backendErr != nil
	s.backendErr = nil
	s.mu.Unlock()
	if was {
		s.health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	}
}
