package worker

import (
	"context"
	"fmt"
	"math"

	pb "stagecoach/proto"
)

// Step implements pb.WorkerServer: it applies optimizer step `iteration`
// (1-based, as the model's Trainer counts) to every held stage, scaling the
// gradients by the coordinator's global clip factor first. A step is
// applied at most once: repeating it is refused with ErrStepApplied
// (AlreadyExists), which a retrying coordinator may read as "done".
func (s *Server) Step(ctx context.Context, req *pb.StepRequest) (*pb.StepResponse, error) {
	resp, err := s.step(ctx, req)
	if err != nil {
		s.cfg.Logf("worker %s: step %d: %v", s.cfg.Name, req.GetIteration(), err)
	}
	s.noteBackend(err)
	return resp, toStatus(err)
}

func (s *Server) step(ctx context.Context, req *pb.StepRequest) (*pb.StepResponse, error) {
	s.control.Lock()
	defer s.control.Unlock()
	j, err := s.admit(ctx, req.GetFence())
	if err != nil {
		return nil, err
	}
	it, clip, lr := req.GetIteration(), req.GetClipScale(), req.GetLr()
	applied := s.appliedStep()
	switch {
	case it <= applied:
		return nil, fmt.Errorf("%w: step %d (last applied %d)", ErrStepApplied, it, applied)
	case it != applied+1 || j.ready != it:
		return nil, fmt.Errorf("%w: no gradients for iteration %d (last applied step %d, gradients ready for %d)", ErrOutOfOrder, it, applied, j.ready)
	case !(clip > 0) || clip > 1 || math.IsInf(lr, 0) || !(lr >= 0):
		return nil, fmt.Errorf("%w: clip scale %v must be in (0,1], lr %v finite and >= 0", ErrBadInput, clip, lr)
	}
	// The trainer computes the clip factor as a float32 and the
	// coordinator ships it as a double: the conversion back is exact.
	f := float32(clip)
	// Whatever happens now, these gradients are spent: a stage that
	// failed after others stepped must not be stepped again (the
	// coordinator restores every worker from a checkpoint instead).
	j.ready = 0
	for _, st := range j.stages {
		if err := st.cs.Step(int(it), lr, f); err != nil {
			return nil, st.fail(fmt.Sprintf("optimizer step %d", it), err)
		}
	}
	s.setApplied(it)
	return &pb.StepResponse{AppliedStep: it}, nil
}
