package worker

import (
	"fmt"

	"stagecoach/model"
	"stagecoach/scheduler"
)

// The ordered all-reduce (scheduler.AllReduceOrdered) makes data-parallel
// replicas bit-identical to the single-process trainer, not only to each
// other. The trainer adds each microbatch's gradient contribution c_mb to
// the gradient once, in microbatch order: (((0 + c_0) + c_1) + ...) (see
// model.Shard's exactness contract). Here each replica keeps its own
// microbatches' contributions apart (model.Shard.SetContributionSink)
// instead of summing them, and at the all-reduce the running sum travels
// through the replicas in microbatch order: the worker of each run of
// consecutive microbatches (scheduler.Plan.OrderedSegments) receives it
// from the previous run's worker, adds its contributions one microbatch
// at a time with the same float32 additions, and sends it on; the last
// one sends the total to every other replica. Step k of the protocol is
// the sum arriving for segment k; step len(segments) is the total.
// Memory: a replica holds its microbatches' contributions until the
// all-reduce (local microbatches x the stage's gradient).

// orderedState is a stage's ordered all-reduce bookkeeping.
type orderedState struct {
	segments []scheduler.Segment
	offset   map[*model.Tensor]int // the parameter's place in the flat gradient
	// contrib holds a buffer per local microbatch, reused from one
	// iteration to the next; got marks those filled this iteration.
	contrib map[int][]float32
	got     map[int]bool
}

// reset forgets the contributions of an earlier (or aborted) iteration.
func (o *orderedState) reset() { clear(o.got) }

// setupOrdered switches st to the ordered all-reduce when the plan asks
// for it on a replicated stage, and back to plain accumulation otherwise
// (a reused shard may carry an earlier plan's sink).
func setupOrdered(st *stage, plan *scheduler.Plan) {
	if len(st.replicas) < 2 || plan.Stages[st.id].AllReduceAlgorithm() != scheduler.AllReduceOrdered {
		st.ordered = nil
		st.shard.SetContributionSink(nil)
		return
	}
	o := &orderedState{segments: plan.OrderedSegments(st.id), offset: map[*model.Tensor]int{},
		contrib: map[int][]float32{}, got: map[int]bool{}}
	n := 0
	for _, p := range st.shard.Params() {
		o.offset[p] = n
		n += len(p.G)
	}
	st.ordered = o
	st.shard.SetContributionSink(func(mb int, ps []*model.Tensor, contrib [][]float32) {
		buf := o.contrib[mb]
		if buf == nil {
			buf = make([]float32, n)
			o.contrib[mb] = buf
		}
		for i, p := range ps {
			copy(buf[o.offset[p]:], contrib[i])
		}
		o.got[mb] = true
	})
}

// orderedAllReduce runs the ordered all-reduce of st (see above).
func (r *run) orderedAllReduce(st *stage, params []*model.Tensor) error {
	o := st.ordered
	me := r.j.me
	segs := o.segments
	last := len(segs) - 1
	if last < 0 {
		return fmt.Errorf("%w: ordered all-reduce of stage %d with no microbatch", ErrBadInput, st.id)
	}
	var sum []float32
	for k, sg := range segs {
		if sg.Worker != me {
			continue
		}
		if k == 0 {
			sum = make([]float32, gradLen(st))
		} else {
			got, err := r.await(st.id, k)
			if err != nil {
				return err
			}
			sum = got
		}
		for _, mb := range sg.Microbatches {
			c := o.contrib[mb]
			if !o.got[mb] {
				return fmt.Errorf("%w: ordered all-reduce of stage %d: no gradient of microbatch %d here", ErrBadInput, st.id, mb)
			}
			for i, v := range c {
				sum[i] = sum[i] + v
			}
		}
		if k < last {
			next := segs[k+1].Worker
			if err := r.send(next, r.allReduceHeader(st, k+1, next, len(sum)), sum); err != nil {
				return err
			}
			continue
		}
		payload := encode(sum) // one encoding, read by every send
		for _, w := range st.replicas {
			if w == me {
				continue
			}
			if err := r.sendEncoded(w, r.allReduceHeader(st, last+1, w, len(sum)), payload); err != nil {
				return err
			}
		}
	}
	if segs[last].Worker != me {
		got, err := r.await(st.id, last+1)
		if err != nil {
			return err
		}
		sum = got
	}
	unflatten(sum, params)
	o.reset()
	return nil
}

// checkOrdered checks an ordered all-reduce tensor: a running sum from
// the worker of the segment before the one this replica holds, or the
// total from the last segment's worker.
func (j *job) checkOrdered(from, step int, elems int32, st *stage) error {
	segs := st.ordered.segments
	ok := false
	switch {
	case step >= 1 && step < len(segs):
		ok = segs[step].Worker == j.me && segs[step-1].Worker == from
	case step == len(segs):
		ok = segs[step-1].Worker == from && from != j.me
	}
	if !ok {
		return fmt.Errorf("%w: ordered all-reduce tensor for stage %d from worker %d at step %d does not follow the microbatch order", ErrBadInput, st.id, from, step)
	}
	if want := gradLen(st); int(elems) != want {
		return fmt.Errorf("%w: ordered all-reduce tensor of %d elements, stage %d has %d", ErrBadInput, elems, st.id, want)
	}
	return nil
}
