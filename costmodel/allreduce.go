package costmodel

import (
	"fmt"

	"stagecoach/scheduler"
)

// All-reduce pricing. A stage's all-reduce starts when all its replicas
// have reached it (the engine's barrier) and ends for all of them at once,
// after the time priced here for the algorithm the plan names
// (scheduler.Stage.AllReduce): ring, direct or ordered. The prices follow
// what the workers do (worker/allreduce.go, worker/ordered.go) over the
// transport (internal/transport): every directed worker pair is its own
// link, a transfer holds it for its busy time (transfers on one link
// queue) and arrives a latency later, and every message carries the
// cluster's framing bytes on top of its payload. A node's sends to different peers do not wait for each other
// unless the cost model gives the node an egress limit (Node.EgressGiBs),
// which the engine's pipeline sends obey too.

// Place is one replica's node: its index in Cluster.Nodes (-1 for an
// unlisted node) and the node.
type Place struct {
	Index int
	Node  *Node
}

// stageGradientBytes is what stage's gradients weigh under c (0: not
// priced).
func stageGradientBytes(c *Cluster, p *scheduler.Plan, stage int) float64 {
	bytes := c.Compute.GradientBytesPerLayer * float64(p.Stages[stage].Layers)
	if g := c.Compute.StageGradientBytes; stage < len(g) {
		bytes = g[stage]
	}
	return bytes
}

// ringAllReduceTime prices the ring over rs in replica order: 2(n-1)
// steps; at each, replica i sends one chunk of bytes/n to replica i+1 and
// waits for its predecessor's chunk, and it sends step s's chunk only once
// it holds step s-1's. So the all-reduce follows the chain of arrivals
// around the ring (with equal hops of h seconds it takes 2(n-1)h) and
// ends when the last replica holds its last chunk.
func ringAllReduceTime(c *Cluster, rs []Place, bytes float64) float64 {
	n := len(rs)
	if n < 2 || bytes == 0 {
		return 0
	}
	chunk := c.MessageBytes(bytes / float64(n))
	hops := make([]Hop, n) // link i -> i+1
	for i, a := range rs {
		b := rs[(i+1)%n]
		hops[i] = c.Price(a.Index, b.Index, a.Node, b.Node, chunk)
	}
	held := make([]float64, n) // when replica i holds the previous step's chunk
	free := make([]float64, n) // when link i -> i+1 (and i's interface) is free
	arrive := make([]float64, n)
	for range 2 * (n - 1) {
		for i := range rs {
			dep := max(held[i], free[i])
			free[i] = dep + hops[i].Occupancy()
			arrive[(i+1)%n] = free[i] + hops[i].Latency
		}
		for i := range rs {
			held[i] = max(held[i], arrive[i])
		}
	}
	end := 0.0
	for _, t := range held {
		end = max(end, t)
	}
	return end
}

// directAllReduceTime prices the one-shot all-reduce over rs: every
// replica sends its whole gradient to every other at once, each on its
// own directed link, and sums once it holds all n. With independent links
// it ends with the slowest of the n(n-1) directed hops of the full
// gradient. A node's egress limit (Node.EgressGiBs) makes its n-1 sends
// take turns on its interface, in the order the workers send them (the
// next replica first, then the one after, around the ring).
func directAllReduceTime(c *Cluster, rs []Place, bytes float64) float64 {
	n := len(rs)
	if n < 2 || bytes == 0 {
		return 0
	}
	msg := c.MessageBytes(bytes)
	end := 0.0
	for i, a := range rs {
		out := 0.0 // when a's interface is free
		for k := 1; k < n; k++ {
			b := rs[(i+k)%n]
			h := c.Price(a.Index, b.Index, a.Node, b.Node, msg)
			dep := 0.0
			if h.Egress > 0 {
				dep, out = out, out+h.Egress
			}
			end = max(end, dep+h.Occupancy()+h.Latency)
		}
	}
	return end
}

// orderedAllReduceTime prices the ordered all-reduce of stage over rs
// (the stage's replicas, in p.StageWorkers order): the running sum, the
// whole gradient, hops from each run of microbatches' worker to the next
// one's (p.OrderedSegments), one after the other, and the last one sends
// the total to every other replica at once (taking turns on its interface
// under an egress limit, as direct's sends do).
func orderedAllReduceTime(c *Cluster, p *scheduler.Plan, stage int, rs []Place, bytes float64) float64 {
	if len(rs) < 2 || bytes == 0 {
		return 0
	}
	msg := c.MessageBytes(bytes)
	ws := p.StageWorkers()[stage]
	at := map[int]Place{}
	for i, w := range ws {
		if i < len(rs) {
			at[w] = rs[i]
		}
	}
	hop := func(a, b Place) Hop { return c.Price(a.Index, b.Index, a.Node, b.Node, msg) }
	segs := p.OrderedSegments(stage)
	t := 0.0
	for k := 1; k < len(segs); k++ {
		h := hop(at[segs[k-1].Worker], at[segs[k].Worker])
		t += h.Occupancy() + h.Latency
	}
	last := segs[len(segs)-1].Worker
	end, out := t, t
	for _, w := range ws {
		if w == last {
			continue
		}
		h := hop(at[last], at[w])
		dep := t
		if h.Egress > 0 {
			dep, out = out, out+h.Occupancy()
		}
		end = max(end, dep+h.Occupancy()+h.Latency)
	}
	return end
}

// allReduceTimeOf prices stage's all-reduce in p over replicas rs, with
// the algorithm p names and the given gradient bytes. A cost model without
// gradient sizes (bytes 0) leaves data-parallel synchronisation out, as
// the SkipPipe authors' simulator does.
func allReduceTimeOf(c *Cluster, p *scheduler.Plan, stage int, rs []Place, bytes float64) float64 {
	switch p.Stages[stage].AllReduceAlgorithm() {
	case scheduler.AllReduceDirect:
		return directAllReduceTime(c, rs, bytes)
	case scheduler.AllReduceOrdered:
		return orderedAllReduceTime(c, p, stage, rs, bytes)
	}
	return ringAllReduceTime(c, rs, bytes)
}

// stageReplicas places the replicas of every stage of p on c's nodes, in
// replica order.
func stageReplicas(p *scheduler.Plan, c *Cluster) ([][]Place, error) {
	out := make([][]Place, len(p.Stages))
	for s, ws := range p.StageWorkers() {
		for _, w := range ws {
			idx, nd, err := c.Lookup(p.Workers[w].Node)
			if err != nil {
				return nil, fmt.Errorf("plan worker %d: %w", w, err)
			}
			out[s] = append(out[s], Place{idx, nd})
		}
	}
	return out, nil
}

// AllReduceChoice is what ChooseAllReduce found for one stage.
type AllReduceChoice struct {
	Stage    int
	Replicas int
	// RingS and DirectS are the two algorithms' prices in seconds.
	RingS, DirectS float64
	// Algorithm is the one chosen (empty for a stage with one replica).
	Algorithm string
}

// ChooseAllReduce sets every replicated stage's all-reduce algorithm in p
// to the cheaper of ring and direct under cluster c, as Run prices them
// (ties go to ring, which moves the fewest bytes), and clears it on
// stages with a single replica. A stage the plan reduces in order
// (scheduler.AllReduceOrdered, for exactness) keeps it. A stage whose gradients c does not size
// (no gradient bytes: the all-reduce is free) keeps what it has. It
// returns both prices per stage and changes nothing else in p. Every
// plan worker's node must be in c (or c must accept any node).
func ChooseAllReduce(p *scheduler.Plan, c *Cluster) ([]AllReduceChoice, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	reps, err := stageReplicas(p, c)
	if err != nil {
		return nil, err
	}
	out := make([]AllReduceChoice, len(p.Stages))
	for s, rs := range reps {
		ch := AllReduceChoice{Stage: s, Replicas: len(rs)}
		bytes := stageGradientBytes(c, p, s)
		switch {
		case len(rs) < 2:
			p.Stages[s].AllReduce = ""
		case bytes == 0 || p.Stages[s].AllReduce == scheduler.AllReduceOrdered:
			// Not priced, nothing to choose on; or ordered, which the
			// plan asks for exactness, not speed.
			ch.Algorithm = p.Stages[s].AllReduce
		default:
			ch.RingS = ringAllReduceTime(c, rs, bytes)
			ch.DirectS = directAllReduceTime(c, rs, bytes)
			ch.Algorithm = scheduler.AllReduceRing
			if ch.DirectS < ch.RingS {
				ch.Algorithm = scheduler.AllReduceDirect
			}
			p.Stages[s].AllReduce = ch.Algorithm
		}
		out[s] = ch
	}
	return out, nil
}

// AllReduceTime prices stage's all-reduce in p under c with the algorithm
// the plan names, as Run charges it.
func AllReduceTime(p *scheduler.Plan, c *Cluster, stage int) (float64, error) {
	if err := c.Validate(); err != nil {
		return 0, err
	}
	if stage < 0 || stage >= len(p.Stages) {
		return 0, fmt.Errorf("stage %d outside 0..%d", stage, len(p.Stages)-1)
	}
	reps, err := stageReplicas(p, c)
	if err != nil {
		return 0, err
	}
	return allReduceTimeOf(c, p, stage, reps[stage], stageGradientBytes(c, p, stage)), nil
}

// AllReducePlaced prices stage's all-reduce in p over its replicas placed
// at rs (in p.StageWorkers order), as AllReduceTime does, for a caller
// that has placed them already (the simulator's engine).
func (c *Cluster) AllReducePlaced(p *scheduler.Plan, stage int, rs []Place) float64 {
	return allReduceTimeOf(c, p, stage, rs, stageGradientBytes(c, p, stage))
}
