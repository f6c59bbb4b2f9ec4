package worker

import (
	"context"
	"errors"
	"fmt"
	"time"

	"stagecoach/compute"
	"stagecoach/model"
	pb "stagecoach/proto"
	"stagecoach/scheduler"
)

// RunIteration implements pb.WorkerServer: it runs the worker's program up
// to, not including, OptimizerStep.
func (s *Server) RunIteration(ctx context.Context, req *pb.RunIterationRequest) (*pb.RunIterationResponse, error) {
	resp, err := s.runIteration(ctx, req)
	if err != nil {
		s.cfg.Logf("worker %s: iteration %d: %v", s.cfg.Name, req.GetIteration(), err)
	}
	s.noteBackend(err)
	return resp, toStatus(err)
}

// run is one iteration in progress. It lives on the RPC's goroutine, the
// only one that touches the Machine, the stages and the tensor store.
type run struct {
	s     *Server
	j     *job
	ctx   context.Context
	fence *pb.Fence
	slot  slot
	m     *scheduler.Machine
	data  map[int]*pb.MicrobatchData
	// store holds tensors delivered to the Machine until the action that
	// consumes them runs, by the Machine's tag.
	store map[scheduler.Tag]*compute.Tensor
	// pieces holds all-reduce chunks by (stage, ring step).
	pieces map[[2]int]arrival
	t0     time.Time
	resp   *pb.RunIterationResponse
}

func (s *Server) runIteration(ctx context.Context, req *pb.RunIterationRequest) (_ *pb.RunIterationResponse, err error) {
	s.control.Lock()
	defer s.control.Unlock()
	j, err := s.admit(ctx, req.GetFence())
	if err != nil {
		return nil, err
	}
	ctx, stop := s.whileLeading(ctx, req.GetFence().GetLeaderRev())
	defer stop()
	defer func() {
		if cause := context.Cause(ctx); err != nil && errors.Is(cause, ErrDeposed) {
			err = fmt.Errorf("%w: %w", cause, err)
		}
	}()
	it := req.GetIteration()
	if applied := s.appliedStep(); it != applied+1 {
		if it <= applied {
			return nil, fmt.Errorf("%w: iteration %d, step %d already applied", ErrStepApplied, it, applied)
		}
		return nil, fmt.Errorf("%w: iteration %d after step %d", ErrOutOfOrder, it, applied)
	}
	r := &run{s: s, j: j, ctx: ctx, fence: req.GetFence(), slot: slot{j.epoch, it},
		m: scheduler.NewMachine(j.ix, j.me), store: map[scheduler.Tag]*compute.Tensor{},
		pieces: map[[2]int]arrival{}, resp: &pb.RunIterationResponse{Losses: map[int32]float64{}}}
	if r.data, err = j.checkData(req.GetData(), s.cfg.Model); err != nil {
		return nil, err
	}
	j.ready = 0
	// Settle sends left over from an aborted attempt so their failures
	// are not reported as this iteration's (they fail fast: their
	// context is gone).
	_ = j.out.Flush(ctx)
	for _, st := range j.stages {
		// Also drops what an aborted attempt left (activations, kept
		// contributions).
		if err := st.cs.ZeroGrad(); err != nil {
			return nil, st.fail("zero gradients", err)
		}
		st.reduced = false
	}
	s.mbox.dropBefore(r.slot)
	r.t0 = time.Now()
	r.resp.StartedUnixS = float64(r.t0.UnixNano()) / 1e9
	if err := r.program(); err != nil {
		// Let queued sends finish or fail before the next attempt; the
		// error that matters is this one.
		_ = j.out.Flush(ctx)
		return nil, err
	}
	if err := j.out.Flush(ctx); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrPeer, err)
	}
	for _, st := range j.stages {
		if !st.reduced {
			if err := finishGrad(st); err != nil {
				return nil, err
			}
		}
		if st.replicas[0] != j.me {
			continue // one replica reports a stage's gradient norm
		}
		ss, err := st.cs.SumSquares()
		if err != nil {
			return nil, st.fail("sums of squares", err)
		}
		if len(ss) != len(st.desc.Params) {
			return nil, st.fail("sums of squares", fmt.Errorf("%w: %d of them for %d parameters", compute.ErrBackend, len(ss), len(st.desc.Params)))
		}
		if r.resp.TensorSumSquares == nil {
			r.resp.TensorSumSquares = map[int32]float64{}
		}
		for i, p := range st.desc.Params {
			r.resp.TensorSumSquares[int32(p.Index)] = ss[i]
			r.resp.GradSumSquares += ss[i]
		}
	}
	if peak, at, ok := s.cfg.MemoryProbe.Take(); ok {
		s.metrics.Load().HeapPeak(peak)
		s.cfg.Infof("iteration %d: live heap peak %d bytes over the %d-byte baseline, after %s",
			it, peak, s.cfg.MemoryProbe.Baseline(), at)
	}
	j.ready = it
	s.backendOK()
	return r.resp, nil
}

// checkData validates the microbatch data against the plan and the model
// and checks that every microbatch this worker embeds or computes the loss
// of is present.
func (j *job) checkData(in []*pb.MicrobatchData, lim model.Limits) (map[int]*pb.MicrobatchData, error) {
	cfg := j.train.Model
	out := make(map[int]*pb.MicrobatchData, len(in))
	for _, d := range in {
		mb := int(d.GetMicrobatch())
		switch {
		case mb < 0 || mb >= len(j.plan.Microbatches):
			return nil, fmt.Errorf("%w: data for microbatch %d outside 0..%d", ErrBadInput, mb, len(j.plan.Microbatches)-1)
		case out[mb] != nil:
			return nil, fmt.Errorf("%w: microbatch %d sent twice", ErrBadInput, mb)
		case d.GetBatch() < 1 || d.GetCtx() < 1 || int(d.GetCtx()) > cfg.Ctx:
			return nil, fmt.Errorf("%w: microbatch %d: batch %d, ctx %d (model ctx %d)", ErrBadInput, mb, d.GetBatch(), d.GetCtx(), cfg.Ctx)
		case j.plan.Microbatches[mb].Samples > 0 && int(d.GetBatch()) != j.plan.Microbatches[mb].Samples:
			return nil, fmt.Errorf("%w: microbatch %d: batch %d, plan says %d samples", ErrBadInput, mb, d.GetBatch(), j.plan.Microbatches[mb].Samples)
		case len(d.GetTokens()) != int(d.GetBatch())*int(d.GetCtx()+1):
			return nil, fmt.Errorf("%w: microbatch %d: %d tokens, want %d windows of %d", ErrBadInput, mb, len(d.GetTokens()), d.GetBatch(), d.GetCtx()+1)
		}
		if err := cfg.CheckLimits(lim, int(d.GetBatch())); err != nil {
			return nil, fmt.Errorf("%w: microbatch %d: %v", ErrBadInput, mb, err)
		}
		for i, t := range d.GetTokens() {
			if t < 0 || int(t) >= cfg.Vocab {
				return nil, fmt.Errorf("%w: microbatch %d: token %d at %d outside [0,%d)", ErrBadInput, mb, t, i, cfg.Vocab)
			}
		}
		out[mb] = d
	}
	for _, a := range j.plan.Programs[j.me] {
		if f, _, _ := a.Halves(); j.needsData(f) && out[f.Microbatch] == nil {
			return nil, fmt.Errorf("%w: no data for microbatch %d, needed by %s", ErrBadInput, f.Microbatch, a)
		}
	}
	return out, nil
}

// needsData: the origin's Forward embeds the tokens, Loss needs targets.
func (j *job) needsData(a scheduler.Action) bool {
	if a.Kind == scheduler.Loss {
		return true
	}
	if a.Kind == scheduler.Forward {
		_, needs := j.ix.Input(j.me, a)
		return !needs
	}
	return false
}

// program drives the Machine until only OptimizerStep (left to Step) or
// nothing remains.
func (r *run) program() error {
	for {
		a, ready, ok := r.m.Peek()
		if !ok || a.Kind == scheduler.OptimizerStep {
			return nil
		}
		if !ready {
			if err := r.receive(); err != nil {
				return fmt.Errorf("waiting for the input of %s: %w", a, err)
			}
			continue
		}
		r.m.Start()
		start := time.Since(r.t0)
		if f, b, pair := a.Halves(); pair {
			// An overlapped pair: this runtime cannot overlap, so it runs
			// the forward, then the backward, and sends both outputs.
			if err := r.pair(f, b, start); err != nil {
				return fmt.Errorf("%s: %w", a, err)
			}
			continue
		}
		out, err := r.exec(a)
		if err != nil {
			return fmt.Errorf("%s: %w", a, err)
		}
		end := time.Since(r.t0)
		r.s.metrics.Load().Action(a.Kind.String(), end-start)
		r.resp.Timings = append(r.resp.Timings, &pb.ActionTiming{Action: a.String(), StartS: start.Seconds(), EndS: end.Seconds()})
		r.s.cfg.MemoryProbe.Sample(a.String())
		if err := r.route(a, out); err != nil {
			return fmt.Errorf("%s: %w", a, err)
		}
	}
}

// pair runs the overlapped action a (started at start) as its forward f
// then its backward b, finishes it in the Machine and routes both outputs.
// Timings and metrics report the halves as they ran, one after the other.
func (r *run) pair(f, b scheduler.Action, start time.Duration) error {
	fo, err := r.exec(f)
	if err != nil {
		return err
	}
	mid := time.Since(r.t0)
	bo, err := r.exec(b)
	if err != nil {
		return err
	}
	end := time.Since(r.t0)
	r.s.metrics.Load().Action(f.Kind.String(), mid-start)
	r.s.metrics.Load().Action(b.Kind.String(), end-mid)
	r.resp.Timings = append(r.resp.Timings,
		&pb.ActionTiming{Action: f.String(), StartS: start.Seconds(), EndS: mid.Seconds()},
		&pb.ActionTiming{Action: b.String(), StartS: mid.Seconds(), EndS: end.Seconds()})
	r.s.cfg.MemoryProbe.Sample(f.String() + "+" + b.String())
	sent := r.m.Finish()
	want := 0
	for _, h := range []struct {
		a   scheduler.Action
		out *compute.Tensor
	}{{f, fo}, {b, bo}} {
		remote, err := r.deliver(h.a, h.out)
		if err != nil {
			return err
		}
		if remote {
			want++
		}
	}
	if len(sent) != want {
		return fmt.Errorf("machine and index disagree on the outputs (%d vs %d)", len(sent), want)
	}
	return nil
}

// receive takes one arrival from the mailbox and files it: pipeline
// tensors are delivered to the Machine, all-reduce chunks kept aside. A
// tensor that turns out unusable (admitted for the next epoch and wrong
// for its plan, or a duplicate) is dropped and counted: it never fails
// the iteration by itself.
func (r *run) receive() error {
	a, err := r.s.mbox.take(r.ctx, r.slot)
	if err != nil {
		return err
	}
	h := a.hdr
	if err := r.file(a); err != nil {
		r.s.cfg.Logf("worker %s: dropped %v mb %d stage %d from worker %d (iteration %d, epoch %d): %v", r.s.cfg.Name,
			h.GetKind(), h.GetMicrobatch(), h.GetStage(), h.GetFrom(), h.GetIteration(), h.GetFence().GetEpoch(), err)
		r.s.metrics.Load().TensorRejected(rejectReason(err))
		return nil
	}
	r.s.metrics.Load().TensorReceived(4 * len(a.data))
	return nil
}

// file checks an arrival against the plan and files it.
func (r *run) file(a arrival) error {
	h := a.hdr
	if a.t.future {
		// Admitted before this epoch's Configure: checked only now.
		if err := r.j.checkTensor(h); err != nil {
			return err
		}
	}
	if h.GetKind() == pb.TensorKind_TENSOR_KIND_ALLREDUCE {
		k := [2]int{int(h.GetStage()), int(h.GetStep())}
		if _, dup := r.pieces[k]; dup {
			return fmt.Errorf("%w: duplicate all-reduce chunk for stage %d step %d", ErrBadInput, k[0], k[1])
		}
		r.pieces[k] = a
		return nil
	}
	msg := scheduler.Message{Kind: tensorKind(h.GetKind()), Microbatch: int(h.GetMicrobatch()), Stage: int(h.GetStage()), From: int(h.GetFrom()), To: int(h.GetTo())}
	if err := r.m.Deliver(msg); err != nil {
		return fmt.Errorf("%w: %v", ErrBadInput, err)
	}
	shape := make([]int, len(h.GetShape()))
	for i, d := range h.GetShape() {
		shape[i] = int(d)
	}
	r.store[msg.Tag()] = &compute.Tensor{Shape: shape, Data: a.data}
	return nil
}

// exec runs one action on its stage and returns the tensor it produces.
func (r *run) exec(a scheduler.Action) (*compute.Tensor, error) {
	j := r.j
	if a.Kind == scheduler.AllReduce {
		return nil, r.allReduce(a.Stage)
	}
	st, err := j.held(a.Stage)
	if err != nil {
		return nil, err
	}
	began := r.s.emu.start()
	var out *compute.Tensor
	switch a.Kind {
	case scheduler.Forward:
		var x *compute.Tensor
		if t, needs := j.ix.Input(j.me, a); needs {
			x = r.take(t)
		} else {
			d := r.data[a.Microbatch]
			x, _ = splitWindows(d)
		}
		out, err = st.cs.Forward(a.Microbatch, x)
	case scheduler.Loss:
		t, _ := j.ix.Input(j.me, a)
		hidden := r.take(t)
		_, targets := splitWindows(r.data[a.Microbatch])
		var loss float64
		if loss, out, err = st.cs.Loss(a.Microbatch, hidden, targets); err == nil {
			r.resp.Losses[int32(a.Microbatch)] = loss
		}
	case scheduler.Backward:
		t, _ := j.ix.Input(j.me, a)
		out, err = st.cs.Backward(a.Microbatch, r.take(t))
	case scheduler.BackwardInput:
		// Without a split backward BackwardInput runs the whole backward
		// (input and weight gradients) and BackwardWeight does nothing:
		// gradient values and their summation order are the same, only
		// the zero-bubble timing benefit is lost.
		t, _ := j.ix.Input(j.me, a)
		if st.desc.Caps.SplitBackward {
			out, err = st.cs.BackwardInput(a.Microbatch, r.take(t))
		} else {
			out, err = st.cs.Backward(a.Microbatch, r.take(t))
		}
	case scheduler.BackwardWeight:
		if st.desc.Caps.SplitBackward {
			err = st.cs.BackwardWeight(a.Microbatch)
		}
	default:
		return nil, fmt.Errorf("%w: action kind %v not executable here", ErrBadInput, a.Kind)
	}
	if err != nil {
		return nil, st.fail(a.Kind.String(), err)
	}
	if err := r.s.emu.finish(r.ctx, began); err != nil {
		return nil, err
	}
	return out, nil
}

func (r *run) take(t scheduler.Tag) *compute.Tensor {
	x := r.store[t]
	delete(r.store, t)
	return x
}

// route finishes a in the Machine and sends its output where the plan
// says: kept locally for a self-send, otherwise queued to the peer.
func (r *run) route(a scheduler.Action, out *compute.Tensor) error {
	j := r.j
	sent := r.m.Finish()
	if msg, has := j.ix.Output(j.me, a); has && msg.To != j.me && (len(sent) != 1 || sent[0] != msg) {
		return fmt.Errorf("machine and index disagree on the output (%v vs %v)", sent, msg)
	}
	_, err := r.deliver(a, out)
	return err
}

// deliver puts the output of a, finished in the Machine, where the plan
// says: kept locally for a self-send, otherwise queued to the peer
// (remote true).
func (r *run) deliver(a scheduler.Action, out *compute.Tensor) (remote bool, err error) {
	j := r.j
	msg, has := j.ix.Output(j.me, a)
	if !has {
		return false, nil
	}
	if out == nil {
		return false, fmt.Errorf("produced no tensor for %s", msg.Tag())
	}
	if msg.To == j.me {
		r.store[msg.Tag()] = out
		return false, nil
	}
	shape := make([]int32, len(out.Shape))
	for i, d := range out.Shape {
		shape[i] = int32(d)
	}
	h := &pb.TensorHeader{Fence: r.fence, Iteration: r.slot.iteration, Kind: wireKind(msg.Kind),
		Microbatch: int32(msg.Microbatch), Stage: int32(msg.Stage), From: int32(msg.From), To: int32(msg.To), Shape: shape}
	if err := r.send(msg.To, h, out.Data); err != nil {
		return true, err
	}
	// The payload is a copy: the stage that computed out may write its
	// next output there rather than into fresh memory.
	if st := j.by[a.Stage]; st != nil {
		if rc, ok := st.cs.(compute.Recycler); ok {
			rc.Recycle(out)
		}
	}
	return true, nil
}

func (r *run) send(to int, h *pb.TensorHeader, data []float32) error {
	return r.sendEncoded(to, h, encode(data))
}

// sendEncoded sends a payload already encoded (one encoding can serve
// several sends of the same tensor).
func (r *run) sendEncoded(to int, h *pb.TensorHeader, payload []byte) error {
	if err := r.j.out.Send(r.ctx, to, h, payload); err != nil {
		return fmt.Errorf("%w: %v", ErrPeer, err)
	}
	r.s.metrics.Load().TensorSent(len(payload))
	return nil
}

func (j *job) held(id int) (*stage, error) {
	st := j.by[id]
	if st == nil {
		return nil, fmt.Errorf("%w: stage %d is not held by worker %d", ErrBadInput, id, j.me)
	}
	return st, nil
}

// finishGrad divides a stage's summed gradients by its visit count over
// all replicas, exactly as the model's FinishGrad does for one process
// (the same float32 reciprocal, applied to every element).
func finishGrad(st *stage) error {
	st.reduced = true
	if st.visits <= 1 {
		return nil
	}
	if err := st.cs.ScaleGrads(1 / float32(st.visits)); err != nil {
		return st.fail("scale gradients", err)
	}
	return nil
}

// splitWindows turns b windows of ctx+1 tokens into the embedding input
// (the token ids as float32 [b, ctx]) and the targets (the same cut as the
// model's single-process trainer).
func splitWindows(d *pb.MicrobatchData) (*compute.Tensor, []int32) {
	b, t := int(d.GetBatch()), int(d.GetCtx())
	win := d.GetTokens()
	ids := make([]float32, b*t)
	tg := make([]int32, b*t)
	for i := 0; i < b; i++ {
		for k, v := range win[i*(t+1) : i*(t+1)+t] {
			ids[i*t+k] = float32(v)
		}
		copy(tg[i*t:], win[i*(t+1)+1:(i+1)*(t+1)])
	}
	return &compute.Tensor{Shape: []int{b, t}, Data: ids}, tg
}
