package costmodel

import "testing"

// Schedule queues transfers on their link and on the sender's interface
// as the package comment on Hop says: a link's transfers one after
// another, latency overlapping the next; an egress-limited sender's
// transfers on different links one after another too.
func TestHopScheduleQueuesOnLinkAndInterface(t *testing.T) {
	var linkAB, linkAC, nic float64
	h := Hop{Busy: 1, Latency: 10}
	if s, a := h.Schedule(0, &linkAB, &nic); s != 0 || a != 11 {
		t.Fatalf("first transfer starts %v arrives %v, want 0 and 11", s, a)
	}
	if s, a := h.Schedule(0, &linkAB, &nic); s != 1 || a != 12 {
		t.Fatalf("second on the same link starts %v arrives %v, want 1 and 12 (queued, latency overlapped)", s, a)
	}
	if s, _ := h.Schedule(0, &linkAC, &nic); s != 0 {
		t.Fatalf("a transfer on another link without egress limit starts %v, want 0", s)
	}
	linkAB, linkAC, nic = 0, 0, 0
	e := Hop{Busy: 1, Egress: 3, Latency: 10}
	if s, a := e.Schedule(0, &linkAB, &nic); s != 0 || a != 13 {
		t.Fatalf("egress-limited transfer starts %v arrives %v, want 0 and 13", s, a)
	}
	if s, a := e.Schedule(0, &linkAC, &nic); s != 3 || a != 16 {
		t.Fatalf("second transfer out of the node, on another link, starts %v arrives %v, want 3 and 16 (after the first left the interface)", s, a)
	}
	if linkAB != 1 || linkAC != 4 || nic != 6 {
		t.Fatalf("free times: links %v %v, interface %v; want 1, 4 and 6", linkAB, linkAC, nic)
	}
}

func TestPriceDelaysAreOccupancyAndEgressAddsUp(t *testing.T) {
	c, err := ParseCluster([]byte(`
name: d
compute: {layer_forward_s: 1}
nodes: [{name: a, egress_gib_s: 1}, {name: b}]
delays: [[0, 0.5], [0.25, 0]]
`))
	if err != nil {
		t.Fatal(err)
	}
	h := c.Price(0, 1, &c.Nodes[0], &c.Nodes[1], 1<<30)
	if h != (Hop{Busy: 0.5, Egress: 1}) {
		t.Errorf("a->b: %+v, want busy 0.5 (the delay), egress 1 s (1 GiB at 1 GiB/s), no latency", h)
	}
	if h := c.Price(1, 1, &c.Nodes[1], &c.Nodes[1], 1<<30); h != (Hop{}) {
		t.Errorf("b->b: %+v, want free", h)
	}
}
