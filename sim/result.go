package sim

import (
	"fmt"
	"sort"
	"strconv"

	"stagecoach/scheduler"
)

// WorkerStats are the measurements of one worker.
type WorkerStats struct {
	Worker          int     `json:"worker"`
	Node            string  `json:"node"`
	ComputeS        float64 `json:"compute_s"`
	CommS           float64 `json:"allreduce_s"`
	IdleS           float64 `json:"idle_s"`
	BubbleFraction  float64 `json:"bubble_fraction"`
	SpanS           float64 `json:"span_s"`
	PeakActivations int     `json:"peak_activations"`
	// PeakBytes is the most memory the worker held (StageMemories), first
	// reached at PeakAtS; StaticBytes of it are held throughout
	// (parameters, gradients, optimizer state). CapacityBytes is its
	// node's memory (0: unbounded).
	PeakBytes     float64 `json:"peak_bytes"`
	PeakAtS       float64 `json:"peak_at_s"`
	StaticBytes   float64 `json:"static_bytes"`
	CapacityBytes float64 `json:"capacity_bytes,omitempty"`
	BytesSent     float64 `json:"bytes_sent"`
}

// LinkStats is the traffic over one directed worker pair.
type LinkStats struct {
	From  int     `json:"from"`
	To    int     `json:"to"`
	Bytes float64 `json:"bytes"`
}

// PathStep is one action on the critical path.
type PathStep struct {
	Worker int     `json:"worker"`
	Action string  `json:"action"`
	Start  float64 `json:"start_s"`
	End    float64 `json:"end_s"`
}

// Result holds what one simulation measured. Bubble figures follow the
// three definitions in use: BubbleFraction is idle worker time over
// workers x makespan (GPipe), BubbleOverIdeal is idle over compute
// (Megatron-LM), SpanS is the longest first-start-to-last-end span of any
// worker (Zero Bubble).
type Result struct {
	Schedule     string `json:"schedule"`
	Workers      int    `json:"workers"`
	Stages       int    `json:"stages"`
	Microbatches int    `json:"microbatches"`
	// Layers is the model's layer count the plan spreads over its stages:
	// schedules compared side by side must simulate the same model.
	Layers     int `json:"layers"`
	Iterations int `json:"iterations"`
	// Infeasible, when set, says why the schedule cannot run under the
	// given limits: its plan breaks the microbatch-count memory bound
	// (set by callers; no figure below is meaningful), or Run found a
	// worker needing more bytes than its node has (the figures are what
	// it would take with enough memory).
	Infeasible     string  `json:"infeasible,omitempty"`
	IterationTimeS float64 `json:"iteration_time_s"`
	// PlanTimeS is how long building the plan took (set by callers).
	PlanTimeS       float64 `json:"plan_time_s,omitempty"`
	MakespanS       float64 `json:"makespan_s"`
	BubbleFraction  float64 `json:"bubble_fraction"`
	BubbleOverIdeal float64 `json:"bubble_over_ideal"`
	SpanS           float64 `json:"span_s"`
	Utilization     float64 `json:"utilization"`
	PeakActivations int     `json:"peak_activations"`
	// PeakBytes is the largest of the workers' peak memory.
	PeakBytes    float64       `json:"peak_bytes"`
	BytesSent    float64       `json:"bytes_sent"`
	Events       int64         `json:"events"`
	PerWorker    []WorkerStats `json:"per_worker"`
	Links        []LinkStats   `json:"links,omitempty"`
	CriticalPath []PathStep    `json:"critical_path,omitempty"`
	// Timeline holds every slice when Options.Detail is set.
	Timeline []Slice `json:"-"`
	// Memory holds every worker's bytes over time when
	// Options.MemoryTimeline is set.
	Memory []MemorySeries `json:"-"`
	// Plan is the simulated plan.
	Plan *scheduler.Plan `json:"-"`
}

func (e *engine) result() *Result {
	p := e.plan
	r := &Result{
		Schedule: p.Schedule, Workers: len(p.Workers), Stages: len(p.Stages),
		Microbatches: len(p.Microbatches), Layers: p.Layers(), Iterations: e.opt.Iterations,
		Events: e.events, Timeline: e.slices, Plan: p,
	}
	for _, st := range e.ws {
		if st.lastEnd > r.MakespanS {
			r.MakespanS = st.lastEnd
		}
	}
	var idle, busy float64
	for w, st := range e.ws {
		peak := 0
		for _, m := range st.ms {
			peak = max(peak, m.PeakInFlight())
		}
		ws := WorkerStats{
			Worker: w, Node: p.Workers[w].Node, ComputeS: st.compute, CommS: st.comm,
			IdleS: r.MakespanS - st.compute, PeakActivations: peak, BytesSent: st.bytes,
			PeakBytes: st.mem.Peak(), PeakAtS: st.memPeakT, StaticBytes: st.mem.Static(), CapacityBytes: st.memCap,
		}
		r.PeakBytes = max(r.PeakBytes, ws.PeakBytes)
		if st.memOver >= 0 && r.Infeasible == "" {
			// The lowest worker over its node's memory names the
			// reason; the figures are what the schedule would take
			// with enough memory.
			r.Infeasible = fmt.Sprintf("worker %d needs %s at t=%s s, node %s has %s",
				w, scheduler.FormatBytes(ws.PeakBytes), strconv.FormatFloat(st.memPeakT, 'g', 6, 64), st.node.Name, scheduler.FormatBytes(st.memCap))
		}
		if e.opt.MemoryTimeline {
			r.Memory = append(r.Memory, MemorySeries{Worker: w, Node: st.node.Name, T: st.memT, Bytes: st.memB, Capacity: st.memCap})
		}
		if st.started {
			ws.SpanS = st.lastEnd - st.first
		}
		if r.MakespanS > 0 {
			ws.BubbleFraction = ws.IdleS / r.MakespanS
		}
		r.PerWorker = append(r.PerWorker, ws)
		idle += ws.IdleS
		busy += st.compute
		r.BytesSent += st.bytes
		r.PeakActivations = max(r.PeakActivations, peak)
		r.SpanS = max(r.SpanS, ws.SpanS)
	}
	r.IterationTimeS = r.MakespanS / float64(e.opt.Iterations)
	if r.MakespanS > 0 {
		r.BubbleFraction = idle / (float64(len(e.ws)) * r.MakespanS)
		r.Utilization = busy / (float64(len(e.ws)) * r.MakespanS)
	}
	if busy > 0 {
		r.BubbleOverIdeal = idle / busy
	}
	for k, b := range e.sent {
		r.Links = append(r.Links, LinkStats{From: k[0], To: k[1], Bytes: b})
	}
	sort.Slice(r.Links, func(i, j int) bool {
		if r.Links[i].From != r.Links[j].From {
			return r.Links[i].From < r.Links[j].From
		}
		return r.Links[i].To < r.Links[j].To
	})
	if e.opt.Detail {
		r.CriticalPath = e.criticalPath()
	}
	return r
}

// criticalPath walks back from the last compute slice to finish through
// the slices that enabled each start.
func (e *engine) criticalPath() []PathStep {
	last := -1
	for i, s := range e.slices {
		if s.Track == TrackCompute && (last < 0 || s.End > e.slices[last].End) {
			last = i
		}
	}
	var out []PathStep
	for i := last; i >= 0; i = e.slices[i].Pred {
		s := e.slices[i]
		name := s.Action.String()
		if s.Track == TrackComm {
			name = "send " + s.Tensor.String() + " to worker " + itoa(s.To)
		}
		out = append(out, PathStep{Worker: s.Worker, Action: name, Start: s.Start, End: s.End})
		if len(out) > len(e.slices) {
			break // defensive: predecessors always point back in time
		}
	}
	for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
		out[i], out[j] = out[j], out[i]
	}
	return out
}

func itoa(i int) string { return strconv.Itoa(i) }
