package transport

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"stagecoach/costmodel"
	pb "stagecoach/proto"
	"stagecoach/sim"
)

// randomCluster writes a cluster file of n nodes over a few regions: a
// delays matrix or region links, some nodes with an egress limit, and
// sometimes any_node.
func randomCluster(r *rand.Rand, n int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "name: random\nhop_overhead_s: %g\n", r.Float64()*1e-3)
	fmt.Fprintf(&b, "compute: {layer_forward_s: 0.001, activation_bytes_per_sample: 1, message_header_bytes: %d}\n", r.IntN(300))
	regions := []string{"r0", "r1", "r2"}
	b.WriteString("nodes:\n")
	for i := range n {
		fmt.Fprintf(&b, "  - {name: n%d, region: %s", i, regions[r.IntN(len(regions))])
		if r.IntN(2) == 0 {
			fmt.Fprintf(&b, ", egress_gib_s: %g", 0.01+r.Float64())
		}
		b.WriteString("}\n")
	}
	if r.IntN(2) == 0 {
		b.WriteString("delays:\n")
		for i := range n {
			b.WriteString("  - [")
			for j := range n {
				if j > 0 {
					b.WriteString(", ")
				}
				d := 0.0
				if i != j {
					d = r.Float64() * 0.1
				}
				fmt.Fprintf(&b, "%g", d)
			}
			b.WriteString("]\n")
		}
		return b.String()
	}
	if r.IntN(2) == 0 {
		fmt.Fprintf(&b, "local_link: {latency_ms: %g, bandwidth_gib_s: %g}\n", r.Float64(), 1+r.Float64()*10)
	}
	fmt.Fprintf(&b, "default_link: {latency_ms: %g, bandwidth_gib_s: %g}\n", r.Float64()*50, 0.01+r.Float64())
	fmt.Fprintf(&b, "links: [{a: r0, b: r1, latency_ms: %g, bandwidth_gib_s: %g}]\n", r.Float64()*50, 0.01+r.Float64())
	return b.String()
}

// The link emulation and the simulator price every hop of random
// clusters alike (delays matrices and egress limits included), and both
// follow the documented rule: a delays entry is link occupancy with no
// latency; otherwise overhead plus wire bytes over the link's bandwidth
// is occupancy and the link's latency follows; a node's egress limit
// holds its interface for wire bytes over it.
func TestClusterShaperAgreesWithTheSimulator(t *testing.T) {
	r := rand.New(rand.NewPCG(12, 1))
	for trial := range 200 {
		n := 2 + r.IntN(5)
		text := randomCluster(r, n)
		c, err := sim.ParseCluster([]byte(text))
		if err != nil {
			t.Fatalf("trial %d: %v\n%s", trial, err, text)
		}
		names := make([]string, n)
		for i := range names {
			names[i] = c.Nodes[i].Name
		}
		regionLink := func(a, b string) (costmodel.Link, bool) {
			if a == b {
				if c.LocalLink == nil {
					return costmodel.Link{}, false
				}
				return *c.LocalLink, true
			}
			for _, l := range c.Links {
				if (l.A == a && l.B == b) || (l.A == b && l.B == a) {
					return l.Link, true
				}
			}
			return *c.DefaultLink, true
		}
		for from := range n {
			s, err := NewClusterShaper(c, names, from)
			if err != nil {
				t.Fatal(err)
			}
			for to := range n {
				payload := r.IntN(64 << 20)
				got := s.Cost(to, payload)
				na, nb := &c.Nodes[from], &c.Nodes[to]
				wire := float64(payload) + c.Compute.MessageHeaderBytes
				if simHop := c.Price(from, to, na, nb, wire); got != simHop {
					t.Fatalf("trial %d, %d->%d: emulation %+v, simulator %+v\n%s", trial, from, to, got, simHop, text)
				}
				var want costmodel.Hop
				if from != to {
					if len(c.Delays) > 0 {
						want.Busy = c.Delays[from][to]
					} else if l, ok := regionLink(na.Region, nb.Region); ok {
						want.Busy = c.HopOverheadS + wire/(l.BandwidthGiBs*(1<<30))
						want.Latency = l.LatencyMS / 1000
					} else {
						want.Busy = c.HopOverheadS
					}
					if na.EgressGiBs > 0 {
						want.Egress = wire / (na.EgressGiBs * (1 << 30))
					}
				}
				if got != want {
					t.Fatalf("trial %d, %d->%d: %+v, want %+v\n%s", trial, from, to, got, want, text)
				}
			}
		}
	}
}

func TestClusterShaperDelaysMatrixIsOccupancy(t *testing.T) {
	c, err := sim.ParseCluster([]byte(`
name: delays
compute: {layer_forward_s: 0.001, activation_bytes_per_sample: 1, gradient_bytes_per_layer: 1}
nodes: [{name: a}, {name: b}]
delays: [[0, 0.25], [0.5, 0]]
`))
	if err != nil {
		t.Fatal(err)
	}
	s, err := NewClusterShaper(c, []string{"a", "b"}, 1)
	if err != nil {
		t.Fatal(err)
	}
	if h := s.Cost(0, 1<<20); h != (costmodel.Hop{Busy: 0.5}) {
		t.Errorf("b->a: %+v, want the 0.5 s delay as link occupancy and no latency", h)
	}
	if _, err := NewClusterShaper(c, []string{"a", "nowhere"}, 0); err == nil {
		t.Error("unknown node accepted")
	}
}

// Two transfers out of one node with an egress limit take turns on its
// interface although they travel on different links: over real gRPC, the
// later one lands no earlier than two egress times after the sends.
func TestEgressLimitSerializesTransfersOutOfANode(t *testing.T) {
	c, err := sim.ParseCluster([]byte(`
name: egress
compute: {layer_forward_s: 0.001, activation_bytes_per_sample: 1}
nodes: [{name: a, region: r, egress_gib_s: 0.001}, {name: b, region: r}, {name: c, region: r}]
local_link: {latency_ms: 0, bandwidth_gib_s: 100}
`))
	if err != nil {
		t.Fatal(err)
	}
	shaper, err := NewClusterShaper(c, []string{"a", "b", "c"}, 0)
	if err != nil {
		t.Fatal(err)
	}
	sb, addrB := startSink(t, 64<<20)
	sc, addrC := startSink(t, 64<<20)
	o, err := NewOutbox(Options{}, []string{"", addrB, addrC}, shaper)
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	const payload = 128 << 10 // ~122 ms on a 1 MiB/s interface
	egress := time.Duration(shaper.Cost(1, payload).Egress * float64(time.Second))
	if busy := shaper.Cost(1, payload).Busy; busy*float64(time.Second) > float64(egress)/50 {
		t.Fatalf("the link's busy time %v s should be negligible next to the egress time %v", busy, egress)
	}
	ctx := context.Background()
	start := time.Now()
	for to := 1; to <= 2; to++ {
		if err := o.Send(ctx, to, &pb.TensorHeader{}, pattern(payload)); err != nil {
			t.Fatal(err)
		}
	}
	if err := o.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	last := sb.at[0]
	if sc.at[0].After(last) {
		last = sc.at[0]
	}
	// Lower bound only: without the interface queue both land after one
	// egress time.
	d := last.Sub(start)
	t.Logf("two transfers out of one node: the later landed after %v (egress time %v each)", d, egress)
	if d < 2*egress {
		t.Errorf("the later of two transfers out of an egress-limited node landed after %v, want >= %v (one after the other)", d, 2*egress)
	}
}
