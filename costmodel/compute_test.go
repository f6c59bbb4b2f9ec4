package costmodel

import (
	"math"
	"strings"
	"testing"

	"stagecoach/scheduler"
)

// A calibration's per-stage times become node speeds: stage s of L_s
// layers measured at StageForwardS[s] runs on a node L_s x LayerForwardS /
// StageForwardS[s] times as fast, and the per-stage fields are dropped.
func TestPerLayerTurnsStageTimesIntoNodeSpeeds(t *testing.T) {
	p, err := scheduler.Generate("gpipe", scheduler.Spec{Stages: 3, Microbatches: 2, Layers: 6, Samples: 1, Nodes: []string{"a", "b", "c"}})
	if err != nil {
		t.Fatal(err)
	}
	c := &Cluster{Name: "calibrated", Nodes: []Node{{Name: "a", Speed: 1}, {Name: "b", Speed: 1}, {Name: "c", Speed: 2}},
		Compute: Compute{LayerForwardS: 0.01, StageForwardS: []float64{0.02, 0.04, 0.01}, StageGradientBytes: []float64{1, 2, 3}}}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	k, err := c.PerLayer(p)
	if err != nil {
		t.Fatal(err)
	}
	if len(k.Compute.StageForwardS) != 0 || len(k.Compute.StageGradientBytes) != 0 {
		t.Errorf("per-stage fields kept: %+v", k.Compute)
	}
	// Two layers per stage at 0.01 s each: a at 0.02 s is as fast as
	// nominal, b at 0.04 s half, c (its own speed 2) at 0.01 s twice
	// nominal again: 2 x 2.
	for name, want := range map[string]float64{"a": 1, "b": 0.5, "c": 4} {
		_, nd, err := k.Lookup(name)
		if err != nil {
			t.Fatal(err)
		}
		if math.Abs(nd.Speed-want) > 1e-12 {
			t.Errorf("node %s: speed %v, want %v", name, nd.Speed, want)
		}
	}
	if c.Compute.StageForwardS == nil || c.Nodes[1].Speed != 1 {
		t.Error("PerLayer changed the cluster it was given")
	}
	// Without per-stage times there is nothing to convert.
	c.Compute.StageForwardS = nil
	if same, err := c.PerLayer(p); err != nil || same != c {
		t.Errorf("a per-layer cluster came back as %p (%v), want itself", same, err)
	}
	// Per-stage times of another plan cannot be turned into speeds.
	c.Compute.StageForwardS = []float64{0.02, 0.04}
	if _, err := c.PerLayer(p); err == nil || !strings.Contains(err.Error(), "prices 2 stages") {
		t.Errorf("2 stage times for 3 stages: %v, want an error saying so", err)
	}
}
