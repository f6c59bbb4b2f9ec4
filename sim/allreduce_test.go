package sim

import (
	"fmt"
	"math"
	"testing"

	"stagecoach/scheduler"
	"stagecoach/scheduler/skippipe"
)

// threeRegions: nodes a, b, c in regions A, B, C; 5 ms per-hop overhead.
// For one 1 MiB ring chunk: a-b busy 67.5 ms + 10 ms latency, b-c 36.25 +
// 30 ms, c-a 20.625 + 50 ms (both directions alike).
func threeRegions(header float64) *Cluster {
	return &Cluster{
		Name: "three-regions",
		Compute: Compute{LayerForwardS: 0.001, ActivationBytesPerSample: 1024,
			GradientBytesPerLayer: 3 << 20, MessageHeaderBytes: header},
		Nodes: []Node{{Name: "a", Region: "A"}, {Name: "b", Region: "B"}, {Name: "c", Region: "C"}},
		Links: []RegionLink{
			{A: "A", B: "B", Link: Link{LatencyMS: 10, BandwidthGiBs: 1.0 / 64}}, // 16 MiB/s
			{A: "B", B: "C", Link: Link{LatencyMS: 30, BandwidthGiBs: 1.0 / 32}}, // 32 MiB/s
			{A: "C", B: "A", Link: Link{LatencyMS: 50, BandwidthGiBs: 1.0 / 16}}, // 64 MiB/s
		},
		HopOverheadS: 0.005,
	}
}

// replicatedPlan is one stage of one layer held by a replica on each
// named node, in that (ring) order.
func replicatedPlan(t *testing.T, nodes ...string) *scheduler.Plan {
	t.Helper()
	p, err := scheduler.Generate("gpipe", scheduler.Spec{Stages: 1, Replicas: len(nodes), Microbatches: len(nodes), Layers: 1, Nodes: nodes})
	if err != nil {
		t.Fatal(err)
	}
	p.Stages[0].AllReduce = "" // GPipe reduces in order; these tests choose
	return p
}

func near(a, b float64) bool { return math.Abs(a-b) < 1e-12 }

// The two algorithms against a computation by hand on three nodes with a
// 3 MiB gradient.
//
// Direct: every directed pair carries the whole 3 MiB at once; the slowest
// is a-b: 5 + 187.5 + 10 = 202.5 ms (b-c 128.75, c-a 101.875). With 1 KiB
// of framing per message: 202.5 ms + 1 KiB / 16 MiB/s = 202.5 + 0.06103515625 ms.
//
// Ring a->b->c->a, 1 MiB chunks, 4 steps; a replica sends step s once it
// holds step s-1 and its link is free (arrivals in ms):
//
//	step 0: b 77.5     c 66.25    a 70.625
//	step 1: b 148.125  c 143.75   a 136.875  (a sends at 70.625, b at 77.5, c at 66.25)
//	step 2: b 215.625  c 214.375  a 214.375  (a waits for its link until 138.125)
//	step 3: b 291.875  c 281.875  a 285
//
// so 291.875 ms, below the old bound of 4 x the slowest hop (310 ms).
func TestAllReduceTimesByHand(t *testing.T) {
	p := replicatedPlan(t, "a", "b", "c")
	c := threeRegions(0)
	for _, tc := range []struct {
		alg  string
		want float64
	}{{"", 0.291875}, {scheduler.AllReduceRing, 0.291875}, {scheduler.AllReduceDirect, 0.2025}} {
		p.Stages[0].AllReduce = tc.alg
		got, err := AllReduceTime(p, c, 0)
		if err != nil {
			t.Fatal(err)
		}
		if !near(got, tc.want) {
			t.Errorf("%q: %.9f s, want %.9f", tc.alg, got, tc.want)
		}
	}
	p.Stages[0].AllReduce = scheduler.AllReduceDirect
	if got, _ := AllReduceTime(p, threeRegions(1024), 0); !near(got, 0.20256103515625) {
		t.Errorf("direct with 1 KiB framing: %.12f s, want 0.20256103515625", got)
	}

	// Run charges exactly that: the iterations differ by the difference.
	iter := func(alg string) float64 {
		p.Stages[0].AllReduce = alg
		r, err := Run(p, threeRegions(0), Options{})
		if err != nil {
			t.Fatal(err)
		}
		return r.IterationTimeS
	}
	if d := iter(scheduler.AllReduceRing) - iter(scheduler.AllReduceDirect); !near(d, 0.291875-0.2025) {
		t.Errorf("ring iteration - direct iteration = %.9f s, want %.9f", d, 0.291875-0.2025)
	}
}

// On equal links the ring takes 2(n-1) hops of a chunk, as before.
func TestRingOnEqualLinks(t *testing.T) {
	c := &Cluster{Name: "flat", Compute: Compute{LayerForwardS: 1, GradientBytesPerLayer: 1 << 30},
		Nodes:     []Node{{Name: "n0", Region: "r"}, {Name: "n1", Region: "r"}, {Name: "n2", Region: "r"}, {Name: "n3", Region: "r"}},
		LocalLink: &Link{LatencyMS: 2, BandwidthGiBs: 1}}
	p := replicatedPlan(t, "n0", "n1", "n2", "n3")
	got, err := AllReduceTime(p, c, 0)
	if err != nil {
		t.Fatal(err)
	}
	if want := 6 * (0.25 + 0.002); !near(got, want) {
		t.Errorf("ring over 4 equal links: %.9f s, want %.9f", got, want)
	}
}

// With a node egress limit a node's sends take turns on its interface.
// Three nodes, 1 ms links of 1 GiB/s, interfaces of 1 GiB/s, 0.375 GiB of
// gradient. Direct: each node's second message leaves after its first,
// 0.375 + 0.375 + 0.001 = 0.751 s (without the limit: 0.376 s). Ring:
// 4 steps of 0.125 + 0.001 s = 0.504 s either way.
func TestEgressLimitSerialisesDirect(t *testing.T) {
	mk := func(egress float64) *Cluster {
		c := &Cluster{Name: "dc", Compute: Compute{LayerForwardS: 1, GradientBytesPerLayer: 0.375 * (1 << 30)},
			LocalLink: &Link{LatencyMS: 1, BandwidthGiBs: 1}}
		for _, n := range []string{"a", "b", "c"} {
			c.Nodes = append(c.Nodes, Node{Name: n, Region: "dc", EgressGiBs: egress})
		}
		return c
	}
	p := replicatedPlan(t, "a", "b", "c")
	for _, tc := range []struct {
		egress, ring, direct float64
	}{{0, 0.504, 0.376}, {1, 0.504, 0.751}} {
		for alg, want := range map[string]float64{scheduler.AllReduceRing: tc.ring, scheduler.AllReduceDirect: tc.direct} {
			p.Stages[0].AllReduce = alg
			got, err := AllReduceTime(p, mk(tc.egress), 0)
			if err != nil {
				t.Fatal(err)
			}
			if !near(got, want) {
				t.Errorf("egress %g GiB/s, %s: %.9f s, want %.9f", tc.egress, alg, got, want)
			}
		}
	}
	// The pipeline's own sends share the interface too: a stage-0 node
	// sending two microbatches' activations to two stage-1 nodes at once.
	c := &Cluster{Name: "fan", Compute: Compute{LayerForwardS: 1e-9, ActivationBytesPerSample: 1 << 30},
		Nodes:     []Node{{Name: "s", Region: "dc", EgressGiBs: 1}, {Name: "t0", Region: "dc"}, {Name: "t1", Region: "dc"}},
		LocalLink: &Link{BandwidthGiBs: 4}}
	fan := &scheduler.Plan{Version: scheduler.FormatVersion, Schedule: "fan", Stages: []scheduler.Stage{{FirstLayer: 0, Layers: 1}, {FirstLayer: 1, Layers: 1}}, HeadStage: 1,
		Workers: []scheduler.Worker{{Node: "s", Stages: []int{0}}, {Node: "t0", Stages: []int{1}}, {Node: "t1", Stages: []int{1}, Replica: 1}},
		Microbatches: []scheduler.Microbatch{
			{Samples: 1, Path: []scheduler.Hop{{Worker: 0, Stage: 0}, {Worker: 1, Stage: 1}}, LossWorker: 1},
			{Samples: 1, Path: []scheduler.Hop{{Worker: 0, Stage: 0}, {Worker: 2, Stage: 1}}, LossWorker: 2}},
		Programs: [][]scheduler.Action{
			{scheduler.F(0, 0), scheduler.F(1, 0), scheduler.B(0, 0), scheduler.B(1, 0), scheduler.Step()},
			{scheduler.F(0, 1), scheduler.L(0, 1), scheduler.B(0, 1), scheduler.R(1), scheduler.Step()},
			{scheduler.F(1, 1), scheduler.L(1, 1), scheduler.B(1, 1), scheduler.R(1), scheduler.Step()}}}
	if err := scheduler.Validate(fan); err != nil {
		t.Fatal(err)
	}
	r, err := Run(fan, c, Options{Detail: true})
	if err != nil {
		t.Fatal(err)
	}
	// The second activation cannot leave before the first has gone
	// through s's 1 GiB/s interface (1 s), although its link is free.
	var arrivals []float64
	for _, sl := range r.Timeline {
		if sl.Track == TrackComm && sl.Worker == 0 {
			arrivals = append(arrivals, sl.End)
		}
	}
	if len(arrivals) != 2 || !(arrivals[1] >= 2-1e-6) {
		t.Errorf("activations out of an egress-limited node arrive at %v, want the second at >= 2 s", arrivals)
	}
}

// The chooser picks by price: on a fast datacenter cluster whose nodes'
// interfaces are shared, ring for a large gradient and direct for a
// small (latency-bound) one; both prices are reported.
func TestChooseAllReduceBySize(t *testing.T) {
	names := make([]string, 8)
	c := &Cluster{Name: "dc", Compute: Compute{LayerForwardS: 1e-3},
		LocalLink: &Link{LatencyMS: 0.05, BandwidthGiBs: 12.5}}
	for i := range names {
		names[i] = fmt.Sprintf("n%d", i)
		c.Nodes = append(c.Nodes, Node{Name: names[i], Region: "dc", EgressGiBs: 12.5})
	}
	for _, tc := range []struct {
		bytes float64
		want  string
	}{{1 << 30, scheduler.AllReduceRing}, {4 << 10, scheduler.AllReduceDirect}} {
		c.Compute.GradientBytesPerLayer = tc.bytes
		p := replicatedPlan(t, names...)
		got, err := ChooseAllReduce(p, c)
		if err != nil {
			t.Fatal(err)
		}
		ch := got[0]
		if ch.Algorithm != tc.want || p.Stages[0].AllReduce != tc.want {
			t.Errorf("%g bytes: chose %q (plan says %q; ring %.6f s, direct %.6f s), want %q", tc.bytes, ch.Algorithm, p.Stages[0].AllReduce, ch.RingS, ch.DirectS, tc.want)
		}
		if price, _ := AllReduceTime(p, c, 0); price != min(ch.RingS, ch.DirectS) {
			t.Errorf("%g bytes: the plan now prices at %v, want the cheaper %v", tc.bytes, price, min(ch.RingS, ch.DirectS))
		}
		if err := scheduler.Validate(p); err != nil {
			t.Error(err)
		}
	}
}

// On the skippipe-geo network (overhead-bound hops between continents) a
// small gradient goes direct on stage 0's five replicas, as planned by
// the SkipPipe placement; a cost model without gradient sizes leaves the
// plan alone, and single-replica stages are cleared.
func TestChooseAllReduceSkipPipeGeo(t *testing.T) {
	c := SkipPipeGeo()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	p := skipGeoPlan(t, c)
	if _, err := ChooseAllReduce(p, c); err != nil {
		t.Fatal(err)
	}
	for s, st := range p.Stages {
		if st.AllReduce != "" {
			t.Errorf("unpriced all-reduces: stage %d set to %q", s, st.AllReduce)
		}
	}
	// 64 KiB of stage-0 gradient (a small model's embedding and head).
	c.Compute.StageGradientBytes = []float64{64 << 10, 16 << 10, 16 << 10, 16 << 10, 16 << 10, 16 << 10}
	got, err := ChooseAllReduce(p, c)
	if err != nil {
		t.Fatal(err)
	}
	if got[0].Replicas != 5 || got[0].Algorithm != scheduler.AllReduceDirect {
		t.Errorf("stage 0: %+v, want direct over 5 replicas", got[0])
	}
	t.Logf("stage 0: ring %.3f s, direct %.3f s", got[0].RingS, got[0].DirectS)
	if !(got[0].DirectS < got[0].RingS/3) {
		t.Errorf("stage 0: direct %.3f s is not far below ring %.3f s on overhead-bound links", got[0].DirectS, got[0].RingS)
	}
}

// skipGeoPlan is GPipe over the SkipPipe placement of the preset's 20
// nodes in stages of [5,3,3,3,3,3].
func skipGeoPlan(t *testing.T, c *Cluster) *scheduler.Plan {
	t.Helper()
	w := c.Workload
	n := len(c.Nodes)
	bytes := float64(w.SamplesPerMicrobatch)*c.Compute.ActivationBytesPerSample + c.Compute.MessageHeaderBytes
	cfg := skippipe.Config{StageSizes: w.StageNodes, MicrobatchesPerOrigin: w.MicrobatchesPerOrigin,
		Layers: w.Layers, Samples: w.SamplesPerMicrobatch, Memory: 6, Seed: 1}
	cfg.Delay, cfg.LinkBusy = make([][]float64, n), make([][]float64, n)
	for a := range n {
		cfg.NodeNames = append(cfg.NodeNames, c.Nodes[a].Name)
		cfg.ForwardS = append(cfg.ForwardS, c.Compute.LayerForwardS*float64(w.Layers/len(w.StageNodes)*w.SamplesPerMicrobatch))
		cfg.Delay[a], cfg.LinkBusy[a] = make([]float64, n), make([]float64, n)
		for b := range n {
			if a != b {
				busy, lat := c.HopTime(a, b, bytes)
				cfg.Delay[a][b], cfg.LinkBusy[a][b] = busy+lat, busy
			}
		}
	}
	p, _, err := skippipe.PlanVariant(skippipe.Full, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// The ordered all-reduce on two replicas a, b with four microbatches in
// blocks (0 and 1 on a, 2 and 3 on b): the running sum hops a->b once,
// then b sends the total to a: two sequential hops of the whole gradient.
// With the microbatches dealt a, b, a, b it would take four. The chooser
// leaves it alone (it is there for exactness).
func TestOrderedAllReducePrice(t *testing.T) {
	c := &Cluster{Name: "two", Compute: Compute{LayerForwardS: 1e-3, GradientBytesPerLayer: 1 << 20},
		Nodes:     []Node{{Name: "a", Region: "x"}, {Name: "b", Region: "y"}},
		Links:     []RegionLink{{A: "x", B: "y", Link: Link{LatencyMS: 10, BandwidthGiBs: 1.0 / 1024}}},
		LocalLink: &Link{LatencyMS: 0.1, BandwidthGiBs: 10}}
	p, err := scheduler.Generate("gpipe", scheduler.Spec{Stages: 1, Replicas: 2, Microbatches: 4, Layers: 1, Nodes: []string{"a", "b"}})
	if err != nil {
		t.Fatal(err)
	}
	if p.Stages[0].AllReduce != scheduler.AllReduceOrdered {
		t.Fatalf("gpipe with replicas reduces %q, want %q", p.Stages[0].AllReduce, scheduler.AllReduceOrdered)
	}
	if segs := p.OrderedSegments(0); len(segs) != 2 {
		t.Fatalf("segments %+v, want two runs of two microbatches", segs)
	}
	// 1 MiB at 1 MiB/s plus 10 ms, twice.
	got, err := AllReduceTime(p, c, 0)
	if err != nil {
		t.Fatal(err)
	}
	if want := 2 * (1 + 0.010); !near(got, want) {
		t.Errorf("ordered all-reduce priced %v s, want %v", got, want)
	}
	// Dealt a, b, a, b: four hops.
	for mb := range p.Microbatches {
		w := mb % 2
		for i := range p.Microbatches[mb].Path {
			p.Microbatches[mb].Path[i].Worker = w
		}
	}
	if got, _ := AllReduceTime(p, c, 0); !near(got, 4*(1+0.010)) {
		t.Errorf("ordered all-reduce over alternating replicas priced %v s, want %v", got, 4*(1+0.010))
	}
	ch, err := ChooseAllReduce(p, c)
	if err != nil {
		t.Fatal(err)
	}
	if p.Stages[0].AllReduce != scheduler.AllReduceOrdered || ch[0].Algorithm != scheduler.AllReduceOrdered {
		t.Errorf("the chooser replaced the ordered all-reduce with %q", p.Stages[0].AllReduce)
	}
}
