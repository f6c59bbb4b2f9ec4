package worker

import (
	"fmt"

	"stagecoach/compute"
	"stagecoach/scheduler"
)

// The ordered all-reduce (scheduler.AllReduceOrdered) makes data-parallel
// replicas bit-identical to the single-process trainer, not only to each
// other. The trainer adds each microbatch's gradient contribution c_mb to
// the gradient once, in microbatch order: (((0 + c_0) + c_1) + ...) (see
// the model's exactness contract). Here each replica's stage keeps its own
// microbatches' contributions apart (compute.Stage.KeepContributions)
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
}

// setupOrdered switches st to the ordered all-reduce when the plan asks
// for it on a replicated stage, and back to plain accumulation otherwise
// (a reused stage may keep contributions for an earlier plan).
func setupOrdered(st *stage, plan *scheduler.Plan) error {
	on := len(st.replicas) > 1 && plan.Stages[st.id].AllReduceAlgorithm() == scheduler.AllReduceOrdered
	st.ordered = nil
	if on {
		st.ordered = &orderedState{segments: plan.OrderedSegments(st.id)}
	}
	if err := st.cs.KeepContributions(on); err != nil {
		return st.fail("keep contributions", err)
	}
	return nil
}

// orderedAllReduce runs the ordered all-reduce of st (see above).
func (r *run) orderedAllReduce(st *stage) error {
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
			sum = make([]float32, st.grads)
		} else {
			got, err := r.await(st.id, k)
			if err != nil {
				return err
			}
			sum = got
		}
		for _, mb := range sg.Microbatches {
			c, err := st.cs.Contribution(mb)
			if err != nil {
				return st.fail(fmt.Sprintf("gradient contribution of microbatch %d", mb), err)
			}
			if len(c) != len(sum) {
				return st.fail(fmt.Sprintf("gradient contribution of microbatch %d", mb),
					fmt.Errorf("%w: %d elements, the stage has %d", compute.ErrBackend, len(c), len(sum)))
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
	if err := st.cs.SetGrads(sum); err != nil {
		return st.fail("set gradients", err)
	}
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
	if want := st.grads; int(elems) != want {
		return fmt.Errorf("%w: ordered all-reduce tensor of %d elements, stage %d has %d", ErrBadInput, elems, st.id, want)
	}
	return nil
}
