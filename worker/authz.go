package worker

import (
	"context"
	"errors"
	"fmt"
	"path"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"stagecoach/internal/metrics"
	"stagecoach/internal/tlsx"
	pb "stagecoach/proto"
)

// Authorization: who may call what. Under mutual TLS (Config.TLS) every
// call's certificate role (tlsx.Identity) is checked before its handler
// runs:
//
//	Worker service (Configure, RunIteration, Step, SaveCheckpoint,
//	LoadCheckpoint, Status)      this job's coordinator
//	Peer.SendTensor              a worker of this job; the tensor's
//	                             claimed sender (header.from) must be the
//	                             plan worker of the certificate's name
//	grpc.health.v1.Health        any caller the CA vouches for (probes)
//
// Anything else is PermissionDenied, counted in
// stagecoach_worker_calls_denied_total{method,reason}. The refusal names
// the method and the role it needs, never the job (a caller from another
// job or none learns nothing of it). Without TLS nothing can be
// authorized: the worker then serves anyone who reaches its port, which
// the CLI allows only on loopback unless told otherwise.
//
// An interceptor rather than grpc-go's authz package: the static part
// (role and job from the URI SAN) would fit its policies, but the sender
// check needs the current plan's names, which only the worker knows.

// ErrPermission is the sentinel of authorization refusals
// (PermissionDenied).
var ErrPermission = errors.New("permission denied")

type identityKey struct{}

// callerIdentity is the caller's authorized role, set by the
// interceptors (the zero Identity when the worker serves plaintext).
func callerIdentity(ctx context.Context) tlsx.Identity {
	id, _ := ctx.Value(identityKey{}).(tlsx.Identity)
	return id
}

// deny counts a refusal and returns its error.
func (s *Server) deny(method, reason, msg string) error {
	s.metrics.Load().Denied(path.Base(method), reason)
	s.cfg.Logf("worker %s: refused %s: %s (%s)", s.cfg.Name, method, msg, reason)
	return status.Errorf(codes.PermissionDenied, "%s: %s %s", ErrPermission, method, msg)
}

// authorize checks the caller of method against the rules above and
// returns its identity.
func (s *Server) authorize(ctx context.Context, method string) (tlsx.Identity, error) {
	if s.cfg.TLS == nil {
		return tlsx.Identity{}, nil
	}
	if strings.HasPrefix(method, "/"+healthpb.Health_ServiceDesc.ServiceName+"/") {
		// The handshake verified the certificate against the CA; a
		// probe needs no role to learn that the worker serves.
		return tlsx.Identity{}, nil
	}
	var want tlsx.Role
	var needs string
	switch {
	case strings.HasPrefix(method, "/"+pb.Worker_ServiceDesc.ServiceName+"/"):
		want, needs = tlsx.RoleCoordinator, "needs this job's coordinator certificate"
	case method == pb.Peer_SendTensor_FullMethodName:
		want, needs = tlsx.RoleWorker, "needs a worker certificate of this job"
	default:
		return tlsx.Identity{}, s.deny(method, metrics.DenyWrongRole, "is not served to anyone")
	}
	id, err := tlsx.PeerIdentity(ctx)
	switch {
	case errors.Is(err, tlsx.ErrNoCertificate):
		return id, s.deny(method, metrics.DenyNoCertificate, needs)
	case err != nil:
		return id, s.deny(method, metrics.DenyNoRole, needs)
	case id.Job != s.cfg.Job:
		return id, s.deny(method, metrics.DenyOtherJob, needs)
	case id.Role != want:
		return id, s.deny(method, metrics.DenyWrongRole, needs)
	}
	return id, nil
}

// authorizeUnary is the unary interceptor of the rules above.
func (s *Server) authorizeUnary(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	id, err := s.authorize(ctx, info.FullMethod)
	if err != nil {
		return nil, err
	}
	return h(context.WithValue(ctx, identityKey{}, id), req)
}

// authorizeStream is the stream interceptor of the rules above. The
// sender check of a tensor needs its header, so SendTensor does it
// (checkSender) on the first chunk, before any payload is buffered: the
// chunks may travel in the transport's raw codec, which only
// internal/transport decodes.
func (s *Server) authorizeStream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	id, err := s.authorize(ss.Context(), info.FullMethod)
	if err != nil {
		return err
	}
	return h(srv, &identityStream{ServerStream: ss, ctx: context.WithValue(ss.Context(), identityKey{}, id)})
}

type identityStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *identityStream) Context() context.Context { return s.ctx }

// errWrongSender refuses a tensor whose claimed sender is not the
// certificate's worker.
var errWrongSender = fmt.Errorf("%w: the tensor's sender is not the worker of the certificate", ErrPermission)

// checkSender checks that a tensor of j's epoch claiming to come from
// plan worker hdr.from was sent under that worker's certificate. Tensors
// of a later epoch (the sender was configured first) are checked when
// their epoch is configured (Configure drops the mismatches).
func (s *Server) checkSender(id tlsx.Identity, j *job, hdr *pb.TensorHeader) error {
	if s.cfg.TLS == nil || j == nil || hdr.GetFence().GetEpoch() != j.epoch {
		return nil
	}
	if !j.sentBy(int(hdr.GetFrom()), id.Name) {
		s.metrics.Load().Denied(path.Base(pb.Peer_SendTensor_FullMethodName), metrics.DenyWrongSender)
		return fmt.Errorf("%w (claims worker %d, certificate of worker %q)", errWrongSender, hdr.GetFrom(), id.Name)
	}
	return nil
}

// sentBy reports whether plan worker from is the worker called name.
func (j *job) sentBy(from int, name string) bool {
	return from >= 0 && from < len(j.names) && j.names[from] == name
}
