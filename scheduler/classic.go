package scheduler

import "fmt"

// rankOrder returns the program of pipeline rank r of p for m local
// microbatches, before loss, all-reduce and optimizer actions are added.
// Actions use local microbatch indices and the chunk index (0..v-1) in
// Stage (and in Back.Stage for an overlapped pair); classicPlan maps them
// to global microbatches and stages through the schedule's placement.
type rankOrder func(rank, p, v, m int) []Action

// placement says which stage each rank's chunks are: stage(rank, chunk)
// and its inverse rankOf(stage). Either way stage 0 is on rank 0, every
// microbatch visits the stages in order, and the head (loss) is on the
// rank holding the last stage.
type placement uint8

const (
	// looped: chunk c of rank r is stage c*p + r (Megatron-LM's
	// interleaving; one chunk is the plain pipeline). The head stage
	// p*v-1 is on rank p-1.
	looped placement = iota
	// vShape folds the chunks in a V (ZB-V, V-Half, V-Min, DualPipeV):
	// even chunks run down the ranks, odd ones back up, so with two
	// chunks rank r holds stages r and 2p-1-r, a microbatch turns round
	// on rank p-1 without a message, and the head stage 2p-1 is on rank 0.
	vShape
)

func (pl placement) stage(rank, chunk, p int) int {
	if pl == vShape && chunk%2 == 1 {
		return chunk*p + p - 1 - rank
	}
	return chunk*p + rank
}

func (pl placement) rankOf(stage, p int) int {
	if pl == vShape && (stage/p)%2 == 1 {
		return p - 1 - stage%p
	}
	return stage % p
}

func init() {
	Register("gpipe", oneStagePerWorker("gpipe", gpipeOrder, false))
	Register("gpipe-recompute", oneStagePerWorker("gpipe-recompute", gpipeOrder, true))
	Register("1f1b", oneStagePerWorker("1f1b", oneFOneBOrder, false))
}

// oneStagePerWorker is a classic schedule whose workers each hold one
// stage: it refuses more chunks, which its order would leave unrun.
func oneStagePerWorker(name string, order rankOrder, recompute bool) Generator {
	return func(s Spec) (*Plan, error) {
		if s.Chunks > 1 {
			return nil, fmt.Errorf("%s: chunks is %d, the schedule holds one stage per worker (interleaved schedules hold several)", name, s.Chunks)
		}
		s.Recompute = s.Recompute || recompute
		return classicPlan(s, name, 1, order)
	}
}

// gpipeOrder: all forwards, then all backwards, both in ascending
// microbatch order (ascending backwards keep gradient summation order
// fixed and cost no time: the flush waits for the last forward anyway).
func gpipeOrder(rank, p, v, m int) []Action {
	out := make([]Action, 0, 2*m)
	for i := range m {
		out = append(out, F(i, 0))
	}
	for i := range m {
		out = append(out, B(i, 0))
	}
	return out
}

// oneFOneBOrder is PipeDream-Flush: rank r runs p-r-1 warm-up forwards,
// then alternates one forward and one backward, then drains.
func oneFOneBOrder(rank, p, v, m int) []Action {
	warm := min(p-rank-1, m)
	out := make([]Action, 0, 2*m)
	for i := range warm {
		out = append(out, F(i, 0))
	}
	for i := 0; i < m-warm; i++ {
		out = append(out, F(warm+i, 0), B(i, 0))
	}
	for i := m - warm; i < m; i++ {
		out = append(out, B(i, 0))
	}
	return out
}

// classicPlan builds a plan in which every microbatch visits every stage in
// order, rank r of every replica holding stages r, r+p, ..., and the loss
// computed on the worker holding the last stage.
func classicPlan(s Spec, name string, defaultChunks int, order rankOrder) (*Plan, error) {
	return classicPlanAt(s, name, defaultChunks, looped, order)
}

// classicPlanAt is classicPlan with the chunks placed by pl.
func classicPlanAt(s Spec, name string, defaultChunks int, pl placement, order rankOrder) (*Plan, error) {
	if err := s.normalise(defaultChunks); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	p, v, nr := s.Stages, s.Chunks, s.Replicas
	ns := p * v
	plan := &Plan{
		Version:   FormatVersion,
		Schedule:  name,
		Iteration: s.Iteration,
		Epoch:     s.Epoch,
		HeadStage: ns - 1,
		Recompute: s.Recompute,
	}
	plan.Stages = SplitLayers(s.Layers, ns)
	if nr > 1 {
		// Replicas reduce in microbatch order: the classic schedules
		// promise the single-process trainer's arithmetic.
		for i := range plan.Stages {
			plan.Stages[i].AllReduce = AllReduceOrdered
		}
	}
	// Worker id = rank*nr + replica.
	plan.Workers = make([]Worker, p*nr)
	for r := range p {
		for k := range nr {
			w := &plan.Workers[r*nr+k]
			w.Replica = k
			w.Memory = s.Memory
			w.Node = fmt.Sprintf("node-%d", r*nr+k)
			if s.Nodes != nil {
				w.Node = s.Nodes[r*nr+k]
			}
			for c := range v {
				w.Stages = append(w.Stages, pl.stage(r, c, p))
			}
		}
	}
	// Replica k takes a contiguous block of microbatches, starting at
	// first[k]: the ordered all-reduce then hops once per replica, not
	// once per microbatch.
	first := make([]int, nr+1)
	for k := range nr {
		local := s.Microbatches / nr
		if k < s.Microbatches%nr {
			local++
		}
		first[k+1] = first[k] + local
	}
	plan.Microbatches = make([]Microbatch, s.Microbatches)
	k := 0
	for mb := range plan.Microbatches {
		for mb >= first[k+1] {
			k++
		}
		path := make([]Hop, ns)
		for st := range ns {
			path[st] = Hop{Worker: pl.rankOf(st, p)*nr + k, Stage: st}
		}
		plan.Microbatches[mb] = Microbatch{Samples: s.Samples, Path: path, LossWorker: path[ns-1].Worker}
	}
	plan.Programs = make([][]Action, len(plan.Workers))
	for k := range nr {
		local := first[k+1] - first[k]
		for r := range p {
			w := r*nr + k
			prog := make([]Action, 0, 3*local*v+v+1)
			for _, a := range order(r, p, v, local) {
				if a.Microbatch >= 0 {
					a.Microbatch += first[k]
				}
				if a.Stage >= 0 {
					a.Stage = pl.stage(r, a.Stage, p)
				}
				if a.Kind == Overlapped {
					a.Back.Microbatch += first[k]
					a.Back.Stage = pl.stage(r, a.Back.Stage, p)
				}
				prog = append(prog, a)
				if (a.Kind == Forward || a.Kind == Overlapped) && a.Stage == ns-1 {
					prog = append(prog, L(a.Microbatch, ns-1))
				}
			}
			if nr > 1 {
				for c := v - 1; c >= 0; c-- {
					prog = append(prog, R(pl.stage(r, c, p)))
				}
			}
			plan.Programs[w] = append(prog, Step())
		}
	}
	return plan, nil
}

// SplitLayers spreads layers over n stages, earlier stages taking the
// remainder: the layer split of every generated or imported plan.
func SplitLayers(layers, n int) []Stage {
	out := make([]Stage, n)
	first := 0
	for i := range out {
		l := layers / n
		if i < layers%n {
			l++
		}
		out[i] = Stage{FirstLayer: first, Layers: l}
		first += l
	}
	return out
}
