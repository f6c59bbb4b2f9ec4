package worker

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"stagecoach/compute"
	"stagecoach/internal/metrics"
	"stagecoach/internal/transport"
	"stagecoach/model"
)

// Named errors. Internally errors wrap these; they become gRPC status
// codes only at the RPC boundary (toStatus).
var (
	// ErrNoFence: a request without a fence.
	ErrNoFence = errors.New("request carries no fence")
	// ErrWrongJob: the fence names another job.
	ErrWrongJob = errors.New("fence names another job")
	// ErrDeposed: the fence's leader revision is below the current
	// leader's (or, without an election source, the highest admitted),
	// so it comes from a deposed leader.
	ErrDeposed = errors.New("fence from a deposed leader")
	// ErrFutureLeader: the fence's leader revision is above the current
	// leader's as etcd shows it: a forgery (or a leader etcd no longer
	// knows), refused and never adopted.
	ErrFutureLeader = errors.New("fence names no current leader")
	// ErrLeaderUnknown: the election could not be read to check a fence.
	ErrLeaderUnknown = errors.New("cannot read the job's election to check the fence")
	// ErrStaleEpoch: the fence's plan epoch is older than the worker's.
	ErrStaleEpoch = errors.New("fence from an older plan epoch")
	// ErrFutureEpoch: a tensor of a plan epoch beyond the next one.
	ErrFutureEpoch = errors.New("tensor from a future plan epoch")
	// ErrNotConfigured: no plan for the fence's epoch yet.
	ErrNotConfigured = errors.New("worker not configured for this epoch")
	// ErrStepApplied: the optimizer step of this iteration was already
	// applied; it is never applied twice.
	ErrStepApplied = errors.New("optimizer step already applied")
	// ErrOutOfOrder: an iteration or step that does not follow the last
	// applied step, or a step without gradients for it.
	ErrOutOfOrder = errors.New("iteration out of order")
	// ErrPeer: a tensor could not be delivered to a peer (or the peer
	// rejected it); the iteration is aborted.
	ErrPeer = errors.New("peer transfer failed")
	// ErrNoCheckpoint: the checkpoint asked for does not exist.
	ErrNoCheckpoint = errors.New("no such checkpoint")
	// ErrCorruptCheckpoint: a checkpoint file whose size or SHA-256 is
	// not the listed one, or which does not parse. The coordinator skips
	// such a checkpoint and falls back to the previous one.
	ErrCorruptCheckpoint = model.ErrCorrupt
	// ErrOutsideRoot: a checkpoint directory outside the worker's
	// checkpoint root.
	ErrOutsideRoot = errors.New("checkpoint directory outside the worker's checkpoint root")
	// ErrBadInput: a request or tensor that is malformed or inconsistent
	// with the plan.
	ErrBadInput = errors.New("bad input")
	// ErrBadShape: bad input of a particular kind, a tensor whose shape
	// disagrees with its payload or with what the plan and model expect.
	ErrBadShape = fmt.Errorf("%w: wrong shape", ErrBadInput)
)

// rejectReason classifies a refused peer tensor for the rejection metric
// by the error that refused it; "" for a stream the sender abandoned,
// which is not a refusal.
func rejectReason(err error) string {
	if c := status.Code(err); c == codes.Canceled || c == codes.DeadlineExceeded ||
		errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return ""
	}
	switch {
	case errors.Is(err, transport.ErrTooLarge):
		return metrics.RejectOversize
	case errors.Is(err, ErrWrongJob):
		return metrics.RejectWrongJob
	case errors.Is(err, ErrStaleEpoch):
		return metrics.RejectStaleEpoch
	case errors.Is(err, ErrFutureEpoch):
		return metrics.RejectFutureEpoch
	case errors.Is(err, ErrQueueFull):
		return metrics.RejectQueueFull
	case errors.Is(err, ErrDeposed):
		return metrics.RejectStaleLeader
	case errors.Is(err, ErrNoFence):
		return metrics.RejectNoFence
	case errors.Is(err, transport.ErrMalformed):
		return metrics.RejectMalformed
	case errors.Is(err, ErrBadShape):
		return metrics.RejectBadShape
	case errors.Is(err, ErrBadInput):
		return metrics.RejectBadInput
	}
	return metrics.RejectOther
}

// toStatus turns an internal error into a gRPC status error.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	// A fence's job and leader revision are the job's secrets: the caller
	// learns which check failed, not the values (the worker logs them).
	for _, e := range []struct {
		err  error
		code codes.Code
	}{{ErrWrongJob, codes.PermissionDenied}, {ErrFutureLeader, codes.PermissionDenied},
		{ErrDeposed, codes.FailedPrecondition}, {ErrLeaderUnknown, codes.Unavailable}} {
		if errors.Is(err, e.err) {
			return status.Error(e.code, e.err.Error())
		}
	}
	code := codes.Internal
	switch {
	case errors.Is(err, ErrPermission), errors.Is(err, ErrOutsideRoot):
		code = codes.PermissionDenied
	case errors.Is(err, ErrCorruptCheckpoint):
		code = codes.DataLoss
	case errors.Is(err, ErrStaleEpoch), errors.Is(err, ErrNotConfigured), errors.Is(err, ErrOutOfOrder):
		code = codes.FailedPrecondition
	case errors.Is(err, ErrStepApplied):
		code = codes.AlreadyExists
	case errors.Is(err, ErrNoFence), errors.Is(err, ErrBadInput), errors.Is(err, transport.ErrMalformed):
		code = codes.InvalidArgument
	case errors.Is(err, transport.ErrTooLarge), errors.Is(err, ErrQueueFull):
		code = codes.ResourceExhausted
	case errors.Is(err, ErrFutureEpoch):
		code = codes.FailedPrecondition
	case errors.Is(err, ErrNoCheckpoint):
		code = codes.NotFound
	case errors.Is(err, ErrPeer), errors.Is(err, compute.ErrBackend):
		// The iteration is lost either way; a failed backend also makes
		// the worker unhealthy (Server.noteBackend), so the coordinator's
		// recovery counts it lost.
		code = codes.Aborted
	case errors.Is(err, context.DeadlineExceeded):
		code = codes.DeadlineExceeded
	case errors.Is(err, context.Canceled):
		code = codes.Canceled
	}
	return status.Error(code, err.Error())
}
