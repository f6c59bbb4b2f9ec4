package planner

import (
	"fmt"
	"strings"
	"testing"

	"stagecoach/costmodel"
	"stagecoach/model"
	"stagecoach/scheduler"
)

// geo is the skippipe-geo cluster's 20 nodes and its workload.
func geo(t *testing.T) (*costmodel.Cluster, []string) {
	t.Helper()
	c := costmodel.SkipPipeGeo()
	var names []string
	for _, nd := range c.Nodes {
		names = append(names, nd.Name)
	}
	return c, names
}

// `stagecoach sim`'s way: the input priced once for the cluster, one
// placement fixed for every variant, then a re-path on a partition after
// a loss, restricted to the survivors.
func TestPricedInputKeepsItsPlacement(t *testing.T) {
	c, names := geo(t)
	w := c.Workload
	in, err := costmodel.SkipPipeInput(c, costmodel.SkipPipeJob{Names: names, StageSizes: w.StageNodes,
		Microbatches: w.MicrobatchesPerOrigin * w.StageNodes[0], Layers: w.Layers, Samples: w.SamplesPerMicrobatch,
		PayloadBytes: float64(w.SamplesPerMicrobatch) * c.Compute.ActivationBytesPerSample, Memory: w.Memory})
	if err != nil {
		t.Fatal(err)
	}
	in.RefinePlacement = true
	if in.Partition, err = Placement(Snapshot{Schedule: SkipPipe, Members: names, Input: &in}); err != nil {
		t.Fatal(err)
	}
	if _, err := Placement(Snapshot{Schedule: "gpipe", Members: names}); err == nil {
		t.Error("a placement for gpipe: want an error")
	}
	for _, name := range []string{SkipPipe, SkipPipeFull} {
		p := plan(t, Snapshot{Schedule: name, Members: names, Input: &in})
		parts := stagesOf(p)
		for s, idx := range in.Partition {
			if len(parts[s]) != len(idx) {
				t.Errorf("%s: stage %d holds %v, the fixed placement %d nodes", name, s, parts[s], len(idx))
			}
		}
		if _, err := Plan(Snapshot{Schedule: name, Members: names[1:], Input: &in}); err == nil || !strings.Contains(err.Error(), "placement covers its 20 nodes") {
			t.Errorf("%s on 19 members: error %v, want the fixed placement refused", name, err)
		}
		lost := parts[3][0]
		after := plan(t, Snapshot{Schedule: name, Parts: without(parts, lost), Prev: p, Input: &in})
		if got := fmt.Sprint(stagesOf(after)); got != fmt.Sprint(without(parts, lost)) {
			t.Errorf("%s after losing %s: placement %s, want %v", name, lost, got, without(parts, lost))
		}
		if len(after.Microbatches) != len(p.Microbatches) {
			t.Errorf("%s after a loss: %d microbatches, want the iteration's %d", name, len(after.Microbatches), len(p.Microbatches))
		}
	}
}

// The coordinator's way: the input priced from the cost model for the
// model trained, the stages from the cluster's workload, and the
// all-reduce chosen (or overridden) on the final plan.
func TestCostModelPlansAndAllReduce(t *testing.T) {
	c, names := geo(t)
	m := model.Config{Layers: 24, Dim: 64, Heads: 4, Ctx: 32}.WithDefaults()
	s := Snapshot{Schedule: SkipPipe, Members: names, Costs: c, Epoch: 3, Rules: Rules{
		Stages: 6, Workers: 20, StageSizes: c.Workload.StageNodes, Microbatches: 30, Layers: 24, Samples: 1, Model: &m,
	}}
	p := plan(t, s)
	sizes := ""
	for _, ns := range stagesOf(p) {
		sizes += fmt.Sprint(len(ns))
	}
	if sizes != "533333" {
		t.Errorf("stage sizes %s, want the workload's 533333", sizes)
	}
	s.Rules.AllReduce = scheduler.AllReduceDirect
	p = plan(t, s)
	for st, ws := range p.StageWorkers() {
		if len(ws) > 1 && p.Stages[st].AllReduce != scheduler.AllReduceDirect {
			t.Errorf("stage %d all-reduce %q, want the override %q", st, p.Stages[st].AllReduce, scheduler.AllReduceDirect)
		}
	}
	s.Rules.Microbatches = 31
	if _, err := Plan(s); err == nil || !strings.Contains(err.Error(), "31 microbatches do not split evenly over the 5 origins") {
		t.Errorf("31 microbatches: error %v", err)
	}
}
