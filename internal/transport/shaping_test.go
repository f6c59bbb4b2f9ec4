package transport

import (
	"testing"
	"time"

	"stagecoach/sim"
)

func TestClusterShaperPricesLikeTheSimulator(t *testing.T) {
	c := sim.SkipPipeGeo()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	// Workers on n0 (Belgium), n10 (London), n12 (Belgium), n0 again.
	s, err := NewClusterShaper(c, []string{"n0", "n10", "n12", "n0"}, 0)
	if err != nil {
		t.Fatal(err)
	}
	var bl sim.Link
	for _, l := range c.Links {
		if (l.A == "Belgium" && l.B == "London") || (l.A == "London" && l.B == "Belgium") {
			bl = l.Link
		}
	}
	const bytes = 8 << 20
	wire := bytes + c.Compute.MessageHeaderBytes
	dur := func(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }
	for _, tc := range []struct {
		to            int
		busy, latency time.Duration
	}{
		{1, dur(c.HopOverheadS + wire/(bl.BandwidthGiBs*(1<<30))), dur(bl.LatencyMS / 1000)},
		{2, dur(c.HopOverheadS + wire/(c.LocalLink.BandwidthGiBs*(1<<30))), dur(c.LocalLink.LatencyMS / 1000)},
		{3, 0, 0}, // same node
	} {
		busy, lat := s.Cost(tc.to, bytes)
		if busy != tc.busy || lat != tc.latency {
			t.Errorf("to worker %d: busy %v latency %v, want %v %v", tc.to, busy, lat, tc.busy, tc.latency)
		}
	}
	if _, err := NewClusterShaper(c, []string{"n0", "nowhere"}, 0); err == nil {
		t.Error("unknown node accepted")
	}
}

func TestClusterShaperDelaysMatrix(t *testing.T) {
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
	if busy, lat := s.Cost(0, 1<<20); busy != 0 || lat != 500*time.Millisecond {
		t.Errorf("b->a: busy %v latency %v, want 0 and 500ms", busy, lat)
	}
}
