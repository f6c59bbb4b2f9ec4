package transport

import (
	"fmt"
	"math"
	"time"

	"stagecoach/sim"
)

// Shaper prices one transfer on the directed link from the Outbox's owner
// to worker `to`: busy is how long the link is occupied (transfers on one
// link queue behind each other), latency is added after it and overlaps
// with the next transfer. Implementations must be safe for concurrent use.
type Shaper interface {
	Cost(to int, bytes int) (busy, latency time.Duration)
}

// ClusterShaper prices links like the simulator does for a sim.Cluster
// (latency, bandwidth, per-hop overhead, or the Delays matrix), so a
// loopback run reproduces a cluster preset such as skippipe-geo.
type ClusterShaper struct {
	c     *sim.Cluster
	from  int
	nodes []*sim.Node // by worker
	index []int       // worker -> index into c.Nodes, -1 for anonymous nodes
}

// NewClusterShaper prices the links from worker `from`; nodes[w] names the
// cluster node worker w runs on (the plan's Worker.Node). c must have been
// validated (sim.ParseCluster does it).
func NewClusterShaper(c *sim.Cluster, nodes []string, from int) (*ClusterShaper, error) {
	if c == nil {
		return nil, fmt.Errorf("transport: nil cluster")
	}
	if from < 0 || from >= len(nodes) {
		return nil, fmt.Errorf("transport: worker %d outside 0..%d", from, len(nodes)-1)
	}
	s := &ClusterShaper{c: c, from: from, nodes: make([]*sim.Node, len(nodes)), index: make([]int, len(nodes))}
	// One map, not a scan per worker: both lists come from the request.
	byName := make(map[string]int, len(c.Nodes))
	for i := range c.Nodes {
		if _, dup := byName[c.Nodes[i].Name]; !dup {
			byName[c.Nodes[i].Name] = i
		}
	}
	for w, name := range nodes {
		s.index[w] = -1
		if i, ok := byName[name]; ok {
			s.index[w], s.nodes[w] = i, &c.Nodes[i]
		}
		if s.nodes[w] == nil {
			if !c.AnyNode {
				return nil, fmt.Errorf("transport: cluster %q has no node %q (worker %d)", c.Name, name, w)
			}
			s.nodes[w] = &sim.Node{Name: name, Speed: 1}
		}
	}
	return s, nil
}

// Cost implements Shaper with the simulator's hop pricing (sim/cluster.go):
// same node free; a Delays matrix is pure latency; otherwise overhead plus
// bytes over the region pair's bandwidth busy, and its latency after.
func (s *ClusterShaper) Cost(to int, bytes int) (busy, latency time.Duration) {
	if to < 0 || to >= len(s.nodes) {
		return 0, 0
	}
	c := s.c
	na, nb := s.nodes[s.from], s.nodes[to]
	if na.Name == nb.Name {
		return 0, 0
	}
	a, b := s.index[s.from], s.index[to]
	if len(c.Delays) > 0 && a >= 0 && b >= 0 {
		return 0, seconds(c.Delays[a][b])
	}
	var l *sim.Link
	if na.Region == nb.Region {
		l = c.LocalLink
	} else {
		for i := range c.Links {
			rl := &c.Links[i]
			if (rl.A == na.Region && rl.B == nb.Region) || (rl.A == nb.Region && rl.B == na.Region) {
				l = &rl.Link
				break
			}
		}
		if l == nil {
			l = c.DefaultLink
		}
	}
	if l == nil {
		return seconds(c.HopOverheadS), 0
	}
	// Like the simulator, every message also carries the cluster's framing
	// bytes. The payload is the real one: calibrate the cluster's
	// activation size from the model for sim and runtime to agree.
	wire := float64(bytes) + c.Compute.MessageHeaderBytes
	return seconds(c.HopOverheadS + wire/(l.BandwidthGiBs*(1<<30))), seconds(l.LatencyMS / 1000)
}

// FixedShaper gives every link the same latency and bandwidth (bytes per
// second; 0 means unlimited). Handy in tests.
type FixedShaper struct {
	Latency     time.Duration
	BytesPerSec float64
}

// Cost implements Shaper.
func (f FixedShaper) Cost(to int, bytes int) (time.Duration, time.Duration) {
	var busy time.Duration
	if f.BytesPerSec > 0 {
		busy = seconds(float64(bytes) / f.BytesPerSec)
	}
	return busy, f.Latency
}

func seconds(s float64) time.Duration {
	if !(s > 0) || math.IsInf(s, 0) {
		return 0
	}
	return time.Duration(s * float64(time.Second))
}
