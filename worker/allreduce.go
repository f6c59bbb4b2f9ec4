package worker

import (
	"fmt"

	"stagecoach/compute"
	pb "stagecoach/proto"
	"stagecoach/scheduler"
)

// All-reduce of a stage's gradients among its replicas, by the algorithm
// the plan names for the stage (scheduler.Stage.AllReduce), over the Peer
// service:
//
//   - ring (the default): reduce-scatter, then all-gather, n-1 steps each,
//     every replica sending 2(n-1)/n of the gradient in 2(n-1) sequential
//     hops;
//   - direct (one-shot): every replica sends its whole flattened gradient
//     to every other replica at once (each send queued on its own
//     destination's link of the outbox, so the n-1 sends travel
//     concurrently, as the simulator prices them), then sums all n
//     itself. One hop instead of 2(n-1), at n-1 times the ring's bytes
//     per replica;
//   - ordered (ordered.go): the running sum of per-microbatch
//     contributions travels through the replicas in microbatch order.
//     The classic schedules use it: it is the only one of the three that
//     reproduces the single-process trainer bit for bit.
//
// Exactness rules. Ring: chunk c is summed in ring order starting at
// replica c, always "received partial sum + own gradient", and then copied
// verbatim to every replica. Direct: every replica sums the n gradients in
// replica-position order, ((g_0 + g_1) + g_2) + ..., from the same bits
// (its own gradient is the one it sent). Either way all replicas end with
// bit-identical sums whatever the network timing. The two algorithms
// group the additions differently (chunk c of the ring starts at replica
// c), so a ring and a direct all-reduce of the same gradients agree to
// float32 rounding; with two replicas they agree bit for bit (a + b =
// b + a). The sum is then divided by the stage's visit count over all
// replicas (compute.Stage.ScaleGrads, with the float32 reciprocal the
// model's FinishGrad uses), as the single-process trainer divides by m.
// With one replica the result equals the trainer bit for bit. With R > 1, ring and
// direct add partial sums (each replica's own microbatches summed first:
// S_even + S_odd instead of one ascending sum), so they agree with the
// trainer to float32 rounding only; ordered adds each microbatch's
// contribution to one running sum in microbatch order, exactly as the
// trainer does (the model's exactness contract), and agrees bit for bit.

// ringChunk is chunk c's range of a flat gradient of total elements.
func ringChunk(c, n, total int) (lo, hi int) {
	return c * total / n, (c + 1) * total / n
}

// ringRecvChunk is the chunk replica pos receives at ring step.
func ringRecvChunk(pos, step, n int) int {
	if step < n-1 {
		return mod(pos-step-1, n)
	}
	return mod(pos-(step-(n-1)), n)
}

// ringChunkLen is the element count replica pos receives at step.
func ringChunkLen(st *stage, pos, step, n int) int {
	lo, hi := ringChunk(ringRecvChunk(pos, step, n), n, st.grads)
	return hi - lo
}

func mod(a, n int) int { return ((a % n) + n) % n }

func (r *run) allReduce(id int) error {
	j := r.j
	st, err := j.held(id)
	if err != nil {
		return err
	}
	if len(st.replicas) > 1 {
		switch {
		case st.ordered != nil:
			err = r.orderedAllReduce(st)
		case j.plan.Stages[id].AllReduceAlgorithm() == scheduler.AllReduceDirect:
			err = r.directAllReduce(st)
		default:
			err = r.ringAllReduce(st)
		}
		if err != nil {
			return err
		}
	}
	return finishGrad(st)
}

// allReduceHeader addresses one all-reduce tensor of stage st to worker to.
func (r *run) allReduceHeader(st *stage, step, to, elems int) *pb.TensorHeader {
	return &pb.TensorHeader{Fence: r.fence, Iteration: r.slot.iteration, Kind: pb.TensorKind_TENSOR_KIND_ALLREDUCE,
		Microbatch: -1, Stage: int32(st.id), Step: int32(step), From: int32(r.j.me), To: int32(to), Shape: []int32{int32(elems)}}
}

func (r *run) ringAllReduce(st *stage) error {
	j := r.j
	id := st.id
	n := len(st.replicas)
	pos := indexOf(st.replicas, j.me)
	next := st.replicas[(pos+1)%n]
	flat, err := flatGrads(st)
	if err != nil {
		return err
	}
	send := func(step, c int) error {
		lo, hi := ringChunk(c, n, len(flat))
		return r.send(next, r.allReduceHeader(st, step, next, hi-lo), flat[lo:hi])
	}
	for step := 0; step < n-1; step++ { // reduce-scatter
		if err := send(step, mod(pos-step, n)); err != nil {
			return err
		}
		piece, err := r.await(id, step)
		if err != nil {
			return err
		}
		lo, _ := ringChunk(ringRecvChunk(pos, step, n), n, len(flat))
		for i, v := range piece {
			flat[lo+i] = v + flat[lo+i]
		}
	}
	for s := 0; s < n-1; s++ { // all-gather
		step := n - 1 + s
		if err := send(step, mod(pos+1-s, n)); err != nil {
			return err
		}
		piece, err := r.await(id, step)
		if err != nil {
			return err
		}
		lo, _ := ringChunk(ringRecvChunk(pos, step, n), n, len(flat))
		copy(flat[lo:], piece)
	}
	if err := st.cs.SetGrads(flat); err != nil {
		return st.fail("set gradients", err)
	}
	return nil
}

// directAllReduce sends this replica's gradient to every other replica
// (the next one first, around the ring, so that not every replica starts
// with the same peer), all at once, then sums the n gradients in replica
// order. The step of a direct tensor is its sender's replica position.
func (r *run) directAllReduce(st *stage) error {
	j := r.j
	n := len(st.replicas)
	pos := indexOf(st.replicas, j.me)
	own, err := flatGrads(st)
	if err != nil {
		return err
	}
	payload := encode(own) // one encoding, read by every send
	for k := 1; k < n; k++ {
		to := st.replicas[(pos+k)%n]
		if err := r.sendEncoded(to, r.allReduceHeader(st, pos, to, len(own)), payload); err != nil {
			return err
		}
	}
	grads := make([][]float32, n)
	grads[pos] = own
	for k := 1; k < n; k++ {
		q := (pos + k) % n
		g, err := r.await(st.id, q)
		if err != nil {
			return err
		}
		grads[q] = g
	}
	sum := grads[0] // the payload is an encoded copy: every buffer here is ours
	for _, g := range grads[1:] {
		for i, v := range g {
			sum[i] = sum[i] + v
		}
	}
	if err := st.cs.SetGrads(sum); err != nil {
		return st.fail("set gradients", err)
	}
	return nil
}

// checkAllReduce checks an all-reduce tensor for stage st against the
// plan: sent by the replica the stage's algorithm has send to this one,
// at a step that exists, with the element count that step carries.
func (j *job) checkAllReduce(h *pb.TensorHeader, st *stage) error {
	n := len(st.replicas)
	pos := indexOf(st.replicas, j.me)
	from, step, shape := int(h.GetFrom()), int(h.GetStep()), h.GetShape()
	if n < 2 || len(shape) != 1 {
		return fmt.Errorf("%w: all-reduce tensor for stage %d of shape %v with %d replicas", ErrBadInput, st.id, shape, n)
	}
	if st.ordered != nil {
		return j.checkOrdered(from, step, shape[0], st)
	}
	if j.plan.Stages[st.id].AllReduceAlgorithm() == scheduler.AllReduceDirect {
		q := indexOf(st.replicas, from)
		if q < 0 || q == pos || step != q {
			return fmt.Errorf("%w: direct all-reduce tensor for stage %d from worker %d at step %d, not another replica's gradient at its position", ErrBadInput, st.id, from, step)
		}
		if want := st.grads; int(shape[0]) != want {
			return fmt.Errorf("%w: direct all-reduce tensor of %d elements, stage %d has %d", ErrBadInput, shape[0], st.id, want)
		}
		return nil
	}
	if from != st.replicas[(pos+n-1)%n] {
		return fmt.Errorf("%w: all-reduce chunk for stage %d from worker %d, not this replica's ring predecessor", ErrBadInput, st.id, from)
	}
	if step < 0 || step >= 2*(n-1) {
		return fmt.Errorf("%w: all-reduce chunk step %d shape %v for %d replicas", ErrBadInput, step, shape, n)
	}
	if want := ringChunkLen(st, pos, step, n); int(shape[0]) != want {
		return fmt.Errorf("%w: all-reduce chunk of %d elements at step %d, want %d", ErrBadInput, shape[0], step, want)
	}
	return nil
}

// await returns the all-reduce chunk for (stage, step), receiving (and
// filing) other tensors while it waits.
func (r *run) await(id, step int) ([]float32, error) {
	k := [2]int{id, step}
	for {
		if a, ok := r.pieces[k]; ok {
			delete(r.pieces, k)
			return a.data, nil
		}
		if err := r.receive(); err != nil {
			return nil, fmt.Errorf("all-reduce of stage %d, step %d: %w", id, step, err)
		}
	}
}

// flatGrads returns st's flat gradient, a slice the caller owns, of the
// length the stage described.
func flatGrads(st *stage) ([]float32, error) {
	g, err := st.cs.Grads()
	if err != nil {
		return nil, st.fail("gradients", err)
	}
	if len(g) != st.grads {
		return nil, st.fail("gradients", fmt.Errorf("%w: %d elements, the stage has %d", compute.ErrBackend, len(g), st.grads))
	}
	return g, nil
}
