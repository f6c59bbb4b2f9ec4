package worker

import (
	"context"
	"fmt"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"

	"stagecoach/internal/transport"
	pb "stagecoach/proto"
	"stagecoach/scheduler"
)

// SendTensor implements pb.PeerServer: it receives one tensor, checks its
// header (fence, epoch window, plan, shape) and reserves room for it
// before any payload is read, and queues it for the iteration it belongs
// to. A refused tensor gets a clear status (a real sender's iteration
// fails, and the coordinator aborts the others) but never fails this
// worker's iteration by itself: a stranger cannot stop training by
// sending junk; if the real tensor is missing, the iteration fails
// through the normal deadline.
func (s *Server) SendTensor(stream pb.Peer_SendTensorServer) error {
	ctx := stream.Context()
	id := callerIdentity(ctx)
	p := peerKey(ctx)
	closeStream, err := s.mbox.open(p)
	if err != nil {
		return s.refuse(p, nil, err)
	}
	defer closeStream()
	var t ticket
	reserved := false
	hdr, payload, err := transport.Receive(stream, s.cfg.Transport.MaxTensorBytes, func(h *pb.TensorHeader) error {
		future, err := s.admitTensor(h, id)
		if err != nil {
			return err
		}
		t = ticket{peer: p, bytes: h.GetTotalBytes(), future: future}
		if err := s.mbox.reserve(ctx, t); err != nil {
			return err
		}
		reserved = true
		return nil
	})
	if err == nil {
		var data []float32
		data, err = transport.DecodeFloat32s(payload)
		payload.Release()
		if err == nil {
			a := arrival{hdr: hdr, data: data, t: t}
			if s.cfg.TLS != nil && t.future {
				a.sender = &id // checked when its epoch is configured
			}
			s.mbox.put(slot{hdr.GetFence().GetEpoch(), hdr.GetIteration()}, a)
			return stream.SendAndClose(&pb.TensorAck{})
		}
	}
	if reserved {
		s.mbox.release(t)
	}
	return s.refuse(p, hdr, err)
}

// refuse logs and counts a refused tensor and returns its status.
func (s *Server) refuse(peer string, hdr *pb.TensorHeader, err error) error {
	desc := "tensor"
	if hdr != nil {
		desc = fmt.Sprintf("%v mb %d stage %d from worker %d (iteration %d, epoch %d)", hdr.GetKind(), hdr.GetMicrobatch(), hdr.GetStage(), hdr.GetFrom(), hdr.GetIteration(), hdr.GetFence().GetEpoch())
	}
	if reason := rejectReason(err); reason != "" {
		s.cfg.Logf("worker %s: refused %s sent by %s: %v", s.cfg.Name, desc, peer, err)
		s.metrics.Load().TensorRejected(reason)
	}
	return toStatus(err)
}

// peerKey names the sender of a stream for the per-peer limits: the
// identity in its certificate's URI SAN when it has one (one per worker),
// else its connection's remote address (each worker dials a peer once).
func peerKey(ctx context.Context) string {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return "unknown peer"
	}
	if ti, ok := p.AuthInfo.(credentials.TLSInfo); ok && len(ti.State.PeerCertificates) > 0 {
		if c := ti.State.PeerCertificates[0]; len(c.URIs) > 0 {
			return c.URIs[0].String()
		}
	}
	if p.Addr == nil {
		return "unknown peer"
	}
	return p.Addr.String()
}

// checkShape checks what can be checked without the plan: a rank of 1 to
// 4, no empty dimension (an empty tensor is never sent), and a declared
// size that matches the shape.
func checkShape(h *pb.TensorHeader) error {
	if len(h.GetShape()) == 0 || len(h.GetShape()) > 4 {
		return fmt.Errorf("%w: tensor rank %d", ErrBadShape, len(h.GetShape()))
	}
	n := int64(1)
	for _, d := range h.GetShape() {
		if d < 1 || n > (1<<40)/int64(d) {
			return fmt.Errorf("%w: tensor shape %v", ErrBadShape, h.GetShape())
		}
		n *= int64(d)
	}
	if 4*n != h.GetTotalBytes() {
		return fmt.Errorf("%w: shape %v needs %d bytes, stream declares %d", ErrBadShape, h.GetShape(), 4*n, h.GetTotalBytes())
	}
	return nil
}

// checkTensor checks a tensor against the plan: addressed to this worker,
// from the worker the plan says produces it, for a held stage, with the
// shape the consuming action needs.
func (j *job) checkTensor(h *pb.TensorHeader) error {
	if err := checkShape(h); err != nil {
		return err
	}
	from, to, mb, stageID := int(h.GetFrom()), int(h.GetTo()), int(h.GetMicrobatch()), int(h.GetStage())
	if to != j.me {
		return fmt.Errorf("%w: tensor for worker %d delivered to worker %d", ErrBadInput, to, j.me)
	}
	st := j.by[stageID]
	if st == nil {
		return fmt.Errorf("%w: tensor for stage %d, not held here", ErrBadInput, stageID)
	}
	shape := h.GetShape()
	if h.GetKind() == pb.TensorKind_TENSOR_KIND_ALLREDUCE {
		return j.checkAllReduce(h, st)
	}
	kind := tensorKind(h.GetKind())
	if kind == 0 {
		return fmt.Errorf("%w: unknown tensor kind %v", ErrBadInput, h.GetKind())
	}
	if mb < 0 || mb >= len(j.plan.Microbatches) {
		return fmt.Errorf("%w: microbatch %d outside 0..%d", ErrBadInput, mb, len(j.plan.Microbatches)-1)
	}
	if want, ok := j.sender(kind, mb, stageID); !ok || want != from {
		return fmt.Errorf("%w: %s for mb %d stage %d from worker %d; the plan sends none from it", ErrBadInput, kind, mb, stageID, from)
	}
	cfg := j.train.Model
	samples := j.plan.Microbatches[mb].Samples
	if len(shape) != 3 || shape[0] < 1 || (samples > 0 && int(shape[0]) != samples) || shape[1] < 1 || int(shape[1]) > cfg.Ctx || int(shape[2]) != cfg.Dim {
		return fmt.Errorf("%w: %s for mb %d has shape %v, want [%d, <=%d, %d]", ErrBadShape, kind, mb, shape, samples, cfg.Ctx, cfg.Dim)
	}
	return nil
}

// sender is the worker the plan has produce the (kind, mb, stage) tensor
// received by this worker.
func (j *job) sender(kind scheduler.TensorKind, mb, stageID int) (int, bool) {
	path := j.plan.Microbatches[mb].Path
	hop := -1
	for i, h := range path {
		if h.Stage == stageID {
			hop = i
		}
	}
	var from int
	var a scheduler.Action
	switch {
	case kind == scheduler.LossInput && len(path) > 0:
		last := path[len(path)-1]
		from, a = last.Worker, scheduler.F(mb, last.Stage)
	case kind == scheduler.Activation && hop > 0:
		from, a = path[hop-1].Worker, scheduler.F(mb, path[hop-1].Stage)
	case kind == scheduler.Gradient && hop == len(path)-1 && hop >= 0:
		from, a = j.plan.Microbatches[mb].LossWorker, scheduler.L(mb, j.plan.HeadStage)
	case kind == scheduler.Gradient && hop >= 0:
		from, a = path[hop+1].Worker, scheduler.B(mb, path[hop+1].Stage)
	default:
		return 0, false
	}
	msg, ok := j.ix.Output(from, a)
	return from, ok && msg.Kind == kind && msg.To == j.me && msg.Stage == stageID
}

func indexOf(xs []int, x int) int {
	for i, v := range xs {
		if v == x {
			return i
		}
	}
	return -1
}

func tensorKind(k pb.TensorKind) scheduler.TensorKind {
	switch k {
	case pb.TensorKind_TENSOR_KIND_ACTIVATION:
		return scheduler.Activation
	case pb.TensorKind_TENSOR_KIND_LOSS_INPUT:
		return scheduler.LossInput
	case pb.TensorKind_TENSOR_KIND_GRADIENT:
		return scheduler.Gradient
	}
	return 0
}

func wireKind(k scheduler.TensorKind) pb.TensorKind {
	switch k {
	case scheduler.Activation:
		return pb.TensorKind_TENSOR_KIND_ACTIVATION
	case scheduler.LossInput:
		return pb.TensorKind_TENSOR_KIND_LOSS_INPUT
	case scheduler.Gradient:
		return pb.TensorKind_TENSOR_KIND_GRADIENT
	}
	return pb.TensorKind_TENSOR_KIND_UNSPECIFIED
}

func encode(data []float32) []byte { return transport.EncodeFloat32s(data) }
