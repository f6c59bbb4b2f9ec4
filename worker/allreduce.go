package worker

import (
	"fmt"

	"stagecoach/model"
	pb "stagecoach/proto"
)

// All-reduce of a stage's gradients among its replicas: a ring over the
// Peer service (reduce-scatter, then all-gather), n-1 steps each, every
// replica sending 2(n-1)/n of the gradient.
//
// Exactness rules. Chunk c is summed in ring order starting at replica c,
// always "received partial sum + own gradient", and then copied verbatim
// to every replica, so all replicas end with bit-identical sums whatever
// the network timing. The sum is then divided by the stage's visit count
// over all replicas (model.Shard's FinishGrad, with the same float32
// reciprocal), as the single-process trainer divides by m. With one
// replica the result equals the trainer bit for bit; with R > 1 each
// replica first sums its own microbatches, so the float32 additions are
// regrouped (S_even + S_odd instead of one ascending sum): results agree
// to float32 rounding, not bit for bit.
//
// Why replicas are not made bit-identical to the single-process trainer
// by reducing per-microbatch contributions in global microbatch order:
// the trainer has no per-microbatch contribution to reorder. Its backward
// accumulates straight into the gradient buffer (model.gemm with beta 1;
// gonum's Sgemm kernels add alpha*a_il*B_l into C one l at a time, and the
// embedding backward adds token rows in place), so the reference value is
// (((G + t_1) + t_2) + ...) over the individual products of every
// microbatch in turn, interleaved with the running sum. An all-gather of
// per-microbatch gradients g_mb, summed in order as ((g_0 + g_1) + ...),
// rounds differently: each g_mb is first summed on its own. The only
// order-preserving alternative is to pass the running gradient buffer
// from replica to replica before every microbatch's backward in global
// order, which serialises the stage's backwards across its replicas and
// moves a whole gradient per microbatch: data parallelism would be gone.
// Making it possible needs a change of the reference itself (backward
// into a per-microbatch scratch with beta 0, then G += scratch element
// by element, in model/), after which an in-order reduction at one
// replica costs (microbatches per replica) x the stage's gradient in
// memory (at most 3.3 MiB each, the default model's whole gradient) and the
// all-gather 2(n-1)/n x that much traffic per microbatch instead of per
// step. That trade is not made here.

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
	total := 0
	for _, p := range st.shard.Params() {
		total += len(p.G)
	}
	lo, hi := ringChunk(ringRecvChunk(pos, step, n), n, total)
	return hi - lo
}

func mod(a, n int) int { return ((a % n) + n) % n }

func (r *run) allReduce(id int) error {
	j := r.j
	st, err := j.held(id)
	if err != nil {
		return err
	}
	params := st.shard.Params()
	n := len(st.replicas)
	if n == 1 {
		finishGrad(st, params)
		return nil
	}
	pos := indexOf(st.replicas, j.me)
	next := st.replicas[(pos+1)%n]
	flat := flatten(params)
	send := func(step, c int) error {
		lo, hi := ringChunk(c, n, len(flat))
		h := &pb.TensorHeader{Fence: r.fence, Iteration: r.slot.iteration, Kind: pb.TensorKind_TENSOR_KIND_ALLREDUCE,
			Microbatch: -1, Stage: int32(id), Step: int32(step), From: int32(j.me), To: int32(next), Shape: []int32{int32(hi - lo)}}
		return r.send(next, h, flat[lo:hi])
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
	unflatten(flat, params)
	finishGrad(st, params)
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

func flatten(params []*model.Tensor) []float32 {
	n := 0
	for _, p := range params {
		n += len(p.G)
	}
	out := make([]float32, 0, n)
	for _, p := range params {
		out = append(out, p.G...)
	}
	return out
}

func unflatten(flat []float32, params []*model.Tensor) {
	for _, p := range params {
		flat = flat[copy(p.G, flat):]
	}
}
