package transport

import (
	"fmt"
	"math"
	"time"

	"stagecoach/costmodel"
)

// Shaper prices one transfer from the Outbox's owner to worker `to` (see
// costmodel.Hop): Busy holds the directed link (transfers on one link
// queue), Egress holds the owner's network interface (all its links take
// turns on it), and Latency is added after the longer of the two and
// overlaps with the next transfer. The Outbox queues transfers with
// costmodel.Hop.Schedule, as the simulator does. Implementations must be
// safe for concurrent use.
type Shaper interface {
	Cost(to int, bytes int) costmodel.Hop
}

// ClusterShaper prices links with the cost model's hop price
// (costmodel.Cluster.Price): latency, bandwidth, per-hop overhead, a
// delays matrix as link occupancy, and the sender's egress limit; so a
// loopback run reproduces a cluster such as the skippipe-geo preset, and
// the simulator and the planner price what it emulates.
type ClusterShaper struct {
	c     *costmodel.Cluster
	from  int
	nodes []*costmodel.Node // by worker
	index []int             // worker -> index into c.Nodes, -1 for anonymous nodes
}

// NewClusterShaper prices the links from worker `from`; nodes[w] names the
// cluster node worker w runs on (the plan's Worker.Node). c must have
// been validated (costmodel.ParseCluster does it).
func NewClusterShaper(c *costmodel.Cluster, nodes []string, from int) (*ClusterShaper, error) {
	if c == nil {
		return nil, fmt.Errorf("transport: nil cluster")
	}
	if from < 0 || from >= len(nodes) {
		return nil, fmt.Errorf("transport: worker %d outside 0..%d", from, len(nodes)-1)
	}
	s := &ClusterShaper{c: c, from: from, nodes: make([]*costmodel.Node, len(nodes)), index: make([]int, len(nodes))}
	for w, name := range nodes {
		i, nd, err := c.Lookup(name)
		if err != nil {
			return nil, fmt.Errorf("transport: worker %d: %w", w, err)
		}
		s.index[w], s.nodes[w] = i, nd
	}
	return s, nil
}

// Cost implements Shaper. The payload is the real one; every message also
// carries the cluster's framing bytes, as the simulator charges them
// (calibrate the cluster's activation size from the model for sim and
// runtime to agree).
func (s *ClusterShaper) Cost(to int, bytes int) costmodel.Hop {
	if to < 0 || to >= len(s.nodes) {
		return costmodel.Hop{}
	}
	return s.c.Price(s.index[s.from], s.index[to], s.nodes[s.from], s.nodes[to], s.c.MessageBytes(float64(bytes)))
}

// FixedShaper gives every link the same latency and bandwidth (bytes per
// second; 0 means unlimited). Handy in tests.
type FixedShaper struct {
	Latency     time.Duration
	BytesPerSec float64
}

// Cost implements Shaper.
func (f FixedShaper) Cost(to int, bytes int) costmodel.Hop {
	h := costmodel.Hop{Latency: f.Latency.Seconds()}
	if f.BytesPerSec > 0 {
		h.Busy = float64(bytes) / f.BytesPerSec
	}
	return h
}

func seconds(s float64) time.Duration {
	if !(s > 0) || math.IsInf(s, 0) {
		return 0
	}
	return time.Duration(s * float64(time.Second))
}
