package costmodel

import "fmt"

// Hop is the price of one transfer between two nodes, in seconds. It is
// the one hop semantics of Stagecoach: the simulator's engine, its
// all-reduces, the SkipPipe planner's delay matrices and the link
// emulation of `up --cluster` (internal/transport) all take it from Price.
//
//   - Busy holds the sender's directed link: transfers on one link queue
//     behind each other. It is the cluster's hop_overhead_s plus the
//     message's bytes over the link's bandwidth, or, when the cluster has
//     a delays matrix, that matrix's entry (the SkipPipe authors' per-hop
//     delays are almost all bandwidth time and fixed overhead, both of
//     which hold the link; charged as occupancy, transfers queue and the
//     authors' own iteration times are reproduced within a few percent).
//   - Egress holds the sender node's network interface, shared by all its
//     outgoing transfers, one after another: bytes over the node's
//     egress_gib_s (0 when the node has no limit).
//   - Latency follows the longer of the two and overlaps with the next
//     transfer: the link's latency_ms (0 under a delays matrix).
//
// A transfer from a node to itself is free.
type Hop struct {
	Busy, Egress, Latency float64
}

// Occupancy is how long the transfer keeps the next one on its link
// waiting when nothing else is queued: the longer of Busy and Egress.
func (h Hop) Occupancy() float64 { return max(h.Busy, h.Egress) }

// Schedule places a transfer ready at time ready on its link, free from
// *link on, and on its sender's interface, free from *nic on, and moves
// both free times past it. It returns when the transfer starts and when
// it arrives. Both the simulator and the link emulation queue transfers
// with it, so they agree on when each one lands.
func (h Hop) Schedule(ready float64, link, nic *float64) (start, arrive float64) {
	start = ready
	if h.Busy > 0 {
		start = max(start, *link)
	}
	if h.Egress > 0 {
		start = max(start, *nic)
		*nic = start + h.Egress
	}
	if h.Busy > 0 {
		*link = start + h.Busy
	}
	return start, start + h.Occupancy() + h.Latency
}

// MessageBytes is what a tensor message of payload bytes weighs on the
// wire: the payload and the cluster's framing (message_header_bytes).
func (c *Cluster) MessageBytes(payload float64) float64 {
	return payload + c.Compute.MessageHeaderBytes
}

// Price prices one message of bytes (already counting the framing; see
// MessageBytes) from node na to node nb. a and b are their indices in
// Nodes, -1 for nodes any_node accepts without listing (which a delays
// matrix cannot price: they take the region links, where they sit in the
// region "").
func (c *Cluster) Price(a, b int, na, nb *Node, bytes float64) Hop {
	busy, lat := c.hop(a, b, na, nb, bytes)
	return Hop{Busy: busy, Egress: egress(na, nb, bytes), Latency: lat}
}

func (c *Cluster) hop(a, b int, na, nb *Node, bytes float64) (busy, latency float64) {
	if na.Name == nb.Name {
		return 0, 0
	}
	if len(c.Delays) > 0 && a >= 0 && b >= 0 {
		return c.Delays[a][b], 0
	}
	l, ok := c.link(na.Region, nb.Region)
	if !ok {
		return c.HopOverheadS, 0
	}
	return c.HopOverheadS + bytes/(l.BandwidthGiBs*(1<<30)), l.LatencyMS / 1000
}

// link is the link between two regions: local_link within one region
// (none: only the hop overhead is paid), the listed region pair, or
// default_link.
func (c *Cluster) link(ra, rb string) (Link, bool) {
	if ra == rb {
		if c.LocalLink == nil {
			return Link{}, false
		}
		return *c.LocalLink, true
	}
	if l, ok := c.links[[2]string{ra, rb}]; ok {
		return l, true
	}
	if c.DefaultLink != nil {
		return *c.DefaultLink, true
	}
	return Link{}, false
}

// egress is how long a transfer of bytes from na to nb holds na's
// network interface (0: unlimited, or the same node).
func egress(na, nb *Node, bytes float64) float64 {
	if na.EgressGiBs <= 0 || na.Name == nb.Name {
		return 0
	}
	return bytes / (na.EgressGiBs * (1 << 30))
}

// HopTime prices one transfer of bytes between nodes a and b (indices
// into Nodes): busy is the time the sender's directed link is held and
// latency follows it (see Hop; the egress limit is left out). Call
// Validate first.
func (c *Cluster) HopTime(a, b int, bytes float64) (busy, latency float64) {
	return c.hop(a, b, &c.Nodes[a], &c.Nodes[b], bytes)
}

// HopMatrix prices one message of bytes (framing included) between every
// pair of the named nodes, as the SkipPipe planner takes them: delay[a][b]
// is when it lands after leaving, busy[a][b] how long it holds the link
// (its Occupancy). c must list every name or accept any node.
func (c *Cluster) HopMatrix(names []string, bytes float64) (delay, busy [][]float64, err error) {
	if err := c.Validate(); err != nil {
		return nil, nil, err
	}
	idx := make([]int, len(names))
	nodes := make([]*Node, len(names))
	for i, name := range names {
		if idx[i], nodes[i], err = c.Lookup(name); err != nil {
			return nil, nil, fmt.Errorf("cost model: %w", err)
		}
	}
	n := len(names)
	delay, busy = make([][]float64, n), make([][]float64, n)
	for a := range n {
		delay[a], busy[a] = make([]float64, n), make([]float64, n)
		for b := range n {
			if a == b {
				continue
			}
			h := c.Price(idx[a], idx[b], nodes[a], nodes[b], bytes)
			busy[a][b], delay[a][b] = h.Occupancy(), h.Occupancy()+h.Latency
		}
	}
	return delay, busy, nil
}
