package coordinator

import (
	"fmt"
	"sort"
	"strconv"
	"strings"

	"stagecoach/costmodel"
	pb "stagecoach/proto"
	"stagecoach/scheduler"
	"stagecoach/timeline"
)

// measurements turns the workers' reported action timings into what the
// simulator understands: a Timeline for the Chrome trace and a calibrated
// cost model.
type measurements struct {
	plan *scheduler.Plan
	// last is the timeline of the most recent step.
	last     []timeline.Slice
	lastSpan float64
	spans    []float64 // per step: first action start to last action end
	bubbles  []float64 // per step: idle worker time over workers x span
	// calibration sums, over every step but the first (warm-up) unless
	// there is only one
	fwdS, fwdSamples []float64 // per stage
	bwdS, lossS      float64
	lossSamples      float64
	fwdAll           float64
	hops             []float64
	totalSteps       int
	unparsed         int
}

func newMeasurements(p *scheduler.Plan, steps int) *measurements {
	return &measurements{plan: p, totalSteps: steps, fwdS: make([]float64, len(p.Stages)), fwdSamples: make([]float64, len(p.Stages))}
}

// parseAction reads an action as scheduler.Action.String renders it:
// kind code, optional microbatch, optional "@s<stage>" ("F3@s1", "R@s0",
// "S").
func parseAction(s string) (scheduler.Action, error) {
	if s == "" {
		return scheduler.Action{}, fmt.Errorf("empty action")
	}
	k, err := scheduler.ParseActionKind(s[:1])
	if err != nil {
		return scheduler.Action{}, err
	}
	a := scheduler.Action{Kind: k, Microbatch: -1, Stage: -1}
	rest := s[1:]
	mb, st, hasStage := strings.Cut(rest, "@s")
	if mb != "" {
		if a.Microbatch, err = strconv.Atoi(mb); err != nil || a.Microbatch < 0 {
			return scheduler.Action{}, fmt.Errorf("action %q: bad microbatch", s)
		}
	}
	if hasStage {
		if a.Stage, err = strconv.Atoi(st); err != nil || a.Stage < 0 {
			return scheduler.Action{}, fmt.Errorf("action %q: bad stage", s)
		}
	}
	return a, nil
}

// add records one step's timings. Worker clocks are the same host's on
// loopback; on real clusters the spans stay right per worker while the
// cross-worker alignment is only as good as the hosts' clock sync.
func (m *measurements) add(step int64, resps []*pb.RunIterationResponse) {
	var slices []timeline.Slice
	base := 0.0
	first := true
	for _, resp := range resps {
		for _, t := range resp.GetTimings() {
			if s := resp.GetStartedUnixS() + t.GetStartS(); first || s < base {
				base, first = s, false
			}
		}
	}
	busy := make([]float64, len(resps))
	span := 0.0
	for w, resp := range resps {
		for _, t := range resp.GetTimings() {
			a, err := parseAction(t.GetAction())
			if err != nil || (a.Stage >= len(m.plan.Stages)) || (a.Microbatch >= len(m.plan.Microbatches)) {
				m.unparsed++
				continue
			}
			s := timeline.Slice{Worker: w, Track: timeline.TrackCompute, Action: a, Start: resp.GetStartedUnixS() + t.GetStartS() - base,
				End: resp.GetStartedUnixS() + t.GetEndS() - base, Pred: -1, To: -1}
			if s.End < s.Start {
				m.unparsed++
				continue
			}
			slices = append(slices, s)
			busy[w] += s.End - s.Start
			span = max(span, s.End)
		}
	}
	sort.SliceStable(slices, func(i, j int) bool {
		if slices[i].Worker != slices[j].Worker {
			return slices[i].Worker < slices[j].Worker
		}
		return slices[i].Start < slices[j].Start
	})
	m.last, m.lastSpan = slices, span
	// Step 1 pays for warm-up (allocations, connection set-up): it is
	// measured and calibrates only in a one-step run.
	steady := step > 1 || m.totalSteps == 1
	if steady && span > 0 {
		idle := 0.0
		for _, b := range busy {
			idle += span - b
		}
		m.spans = append(m.spans, span)
		m.bubbles = append(m.bubbles, idle/(float64(len(resps))*span))
	}
	if steady {
		m.calibrate(slices)
	}
}

// calibrate accumulates compute times per stage and kind, and the hop
// delays: for a forward hop whose receiver sat idle, the gap between the
// sender's forward ending and the receiver's forward starting is the
// transfer.
func (m *measurements) calibrate(slices []timeline.Slice) {
	type key struct {
		w int
		a scheduler.Action
	}
	at := map[key]timeline.Slice{}
	prevEnd := map[key]float64{} // end of the slice before this one on its worker
	for i, s := range slices {
		k := key{s.Worker, s.Action}
		at[k] = s
		prevEnd[k] = -1
		if i > 0 && slices[i-1].Worker == s.Worker {
			prevEnd[k] = slices[i-1].End
		}
		samples := 1.0
		if s.Action.Microbatch >= 0 {
			samples = float64(m.plan.Microbatches[s.Action.Microbatch].Samples)
		}
		d := s.End - s.Start
		switch s.Action.Kind {
		case scheduler.Forward:
			if s.Action.Stage >= 0 {
				m.fwdS[s.Action.Stage] += d
				m.fwdSamples[s.Action.Stage] += samples
			}
			m.fwdAll += d
		case scheduler.Backward:
			m.bwdS += d
		case scheduler.Loss:
			m.lossS += d
			m.lossSamples += samples
		}
	}
	for mb, p := range m.plan.Microbatches {
		for i := 1; i < len(p.Path); i++ {
			a, b := p.Path[i-1], p.Path[i]
			if a.Worker == b.Worker {
				continue
			}
			src, ok1 := at[key{a.Worker, scheduler.F(mb, a.Stage)}]
			dst, ok2 := at[key{b.Worker, scheduler.F(mb, b.Stage)}]
			if !ok1 || !ok2 {
				continue
			}
			if pe := prevEnd[key{b.Worker, scheduler.F(mb, b.Stage)}]; pe <= src.End && dst.Start >= src.End {
				m.hops = append(m.hops, dst.Start-src.End)
			}
		}
	}
}

// cluster is the cost model calibrated from the measurements, or nil
// when nothing was measured.
func (m *measurements) cluster() *costmodel.Cluster {
	layers := 0
	fwd, samples := 0.0, 0.0
	stageF := make([]float64, len(m.plan.Stages))
	for s, st := range m.plan.Stages {
		layers += st.Layers
		fwd += m.fwdS[s]
		samples += m.fwdSamples[s]
	}
	if samples == 0 || layers == 0 || fwd == 0 {
		return nil
	}
	perLayer := fwd / samples / float64(len(m.plan.Stages)) / (float64(layers) / float64(len(m.plan.Stages)))
	for s, st := range m.plan.Stages {
		if m.fwdSamples[s] > 0 {
			stageF[s] = m.fwdS[s] / m.fwdSamples[s]
		} else {
			stageF[s] = perLayer * float64(st.Layers)
		}
	}
	c := &costmodel.Cluster{Name: "calibrated", AnyNode: true, Compute: costmodel.Compute{
		LayerForwardS: perLayer, StageForwardS: stageF,
	}}
	if m.bwdS > 0 && m.fwdAll > 0 {
		c.Compute.BackwardRatio = m.bwdS / m.fwdAll
	}
	if m.lossSamples > 0 && perLayer > 0 {
		c.Compute.LossLayers = m.lossS / m.lossSamples / perLayer
	}
	if len(m.hops) > 0 {
		h := append([]float64(nil), m.hops...)
		sort.Float64s(h)
		c.HopOverheadS = h[len(h)/2]
	}
	return c
}

// median of xs (0 for none).
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
