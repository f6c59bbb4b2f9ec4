package sim

import (
	"fmt"

	"stagecoach/scheduler"
)

// All-reduce pricing. A stage's all-reduce starts when all its replicas
// have reached it (the engine's barrier) and ends for all of them at once,
// after the time priced here for the algorithm the plan names
// (scheduler.Stage.AllReduce). Both prices follow what the workers do
// (worker/allreduce.go) over the transport (internal/transport): every
// directed worker pair is its own link, a transfer holds it for its busy
// time (transfers on one link queue) and arrives a latency later, and
// every message carries the cluster's framing bytes on top of its
// payload. A node's sends to different peers do not wait for each other
// unless the cost model gives the node an egress limit (Node.EgressGiBs),
// which the engine's pipeline sends obey too.

// arNode is one replica's place in the cluster.
type arNode struct {
	idx  int
	node *Node
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
func ringAllReduceTime(c *Cluster, rs []arNode, bytes float64) float64 {
	n := len(rs)
	if n < 2 || bytes == 0 {
		return 0
	}
	chunk := bytes/float64(n) + c.Compute.MessageHeaderBytes
	busy, lat, nic := make([]float64, n), make([]float64, n), make([]float64, n) // link i -> i+1
	for i, a := range rs {
		b := rs[(i+1)%n]
		busy[i], lat[i] = c.hop(a.idx, b.idx, a.node, b.node, chunk)
		nic[i] = egress(a.node, b.node, chunk)
	}
	held := make([]float64, n) // when replica i holds the previous step's chunk
	free := make([]float64, n) // when link i -> i+1 (and i's interface) is free
	arrive := make([]float64, n)
	for range 2 * (n - 1) {
		for i := range rs {
			dep := max(held[i], free[i])
			free[i] = dep + max(busy[i], nic[i])
			arrive[(i+1)%n] = free[i] + lat[i]
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
func directAllReduceTime(c *Cluster, rs []arNode, bytes float64) float64 {
	n := len(rs)
	if n < 2 || bytes == 0 {
		return 0
	}
	msg := bytes + c.Compute.MessageHeaderBytes
	end := 0.0
	for i, a := range rs {
		out := 0.0 // when a's interface is free
		for k := 1; k < n; k++ {
			b := rs[(i+k)%n]
			busy, lat := c.hop(a.idx, b.idx, a.node, b.node, msg)
			nic := egress(a.node, b.node, msg)
			dep := 0.0
			if nic > 0 {
				dep, out = out, out+nic
			}
			end = max(end, dep+max(busy, nic)+lat)
		}
	}
	return end
}

// allReduceTimeOf prices algorithm alg for a stage of the given gradient
// bytes over replicas rs. A cost model without gradient sizes (bytes 0)
// leaves data-parallel synchronisation out, as the SkipPipe authors'
// simulator does.
func allReduceTimeOf(c *Cluster, alg string, rs []arNode, bytes float64) float64 {
	if alg == scheduler.AllReduceDirect {
		return directAllReduceTime(c, rs, bytes)
	}
	return ringAllReduceTime(c, rs, bytes)
}

// stageReplicas places the replicas of every stage of p on c's nodes, in
// replica order.
func stageReplicas(p *scheduler.Plan, c *Cluster) ([][]arNode, error) {
	out := make([][]arNode, len(p.Stages))
	for s, ws := range p.StageWorkers() {
		for _, w := range ws {
			idx, nd, err := c.node(p.Workers[w].Node)
			if err != nil {
				return nil, fmt.Errorf("plan worker %d: %w", w, err)
			}
			out[s] = append(out[s], arNode{idx, nd})
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
// stages with a single replica. A stage whose gradients c does not size
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
		case bytes == 0:
			ch.Algorithm = p.Stages[s].AllReduce // not priced: nothing to choose on
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
	return allReduceTimeOf(c, p.Stages[stage].AllReduceAlgorithm(), reps[stage], stageGradientBytes(c, p, stage)), nil
}
