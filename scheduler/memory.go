package scheduler

import (
	"fmt"
	"math"
)

// StageMemory is what one stage weighs, in bytes, on a worker that holds
// it. A cost model fills it (sim.StageMemories, from the model's shapes or
// a calibration); the plan itself carries only counts (Worker.Memory).
type StageMemory struct {
	// Static is held for the whole iteration: parameters, gradients and
	// optimizer state.
	Static float64
	// Activations is what one sample's forward keeps for its backward.
	Activations float64
	// Input is one sample's stage input: all that a recomputing plan
	// (Plan.Recompute) keeps between the forward and the backward.
	Input float64
	// WeightGrad is what one sample keeps between its input gradient (I)
	// and its deferred weight gradient (W) in a split backward.
	WeightGrad float64
	// Loss is what one sample's loss action holds while it runs (logits
	// and their gradient), on the head stage.
	Loss float64
	// Workspace is scratch the stage keeps between microbatches (the Go
	// model's gradient buffers and logits), held all iteration like
	// Static.
	Workspace float64
}

// MemoryUse follows one worker's bytes as its program runs: Start and
// Finish apply an action's allocation when it starts and its release when
// it ends. Memory depends on the order of the worker's own actions only,
// so the validator (program order) and the simulator (timed) share it.
type MemoryUse struct {
	plan   *Plan
	ix     *Index
	stages []StageMemory
	static float64
	cur    float64
	peak   float64
	// held[mb*ns+stage] is what a started microbatch keeps on the stage.
	held map[int]float64
}

// NewMemoryUse returns the tracker of worker's bytes under stages (one
// entry per plan stage), starting at the static bytes of the stages it
// holds.
func NewMemoryUse(ix *Index, worker int, stages []StageMemory) (*MemoryUse, error) {
	p := ix.plan
	if len(stages) != len(p.Stages) {
		return nil, fmt.Errorf("memory: %d stage sizes for a plan of %d stages", len(stages), len(p.Stages))
	}
	for i, s := range stages {
		for _, v := range []float64{s.Static, s.Activations, s.Input, s.WeightGrad, s.Loss, s.Workspace} {
			if !(v >= 0) || math.IsInf(v, 0) {
				return nil, fmt.Errorf("memory: stage %d sizes %+v, want finite numbers >= 0", i, s)
			}
		}
	}
	u := &MemoryUse{plan: p, ix: ix, stages: stages, held: map[int]float64{}}
	for _, s := range p.Workers[worker].Stages {
		u.static += stages[s].Static + stages[s].Workspace
	}
	u.cur, u.peak = u.static, u.static
	return u, nil
}

// Static is the bytes held throughout: the worker's stages' parameters,
// gradients, optimizer state and workspace.
func (u *MemoryUse) Static() float64 { return u.static }

// Bytes is what the worker holds now.
func (u *MemoryUse) Bytes() float64 { return u.cur }

// Peak is the most the worker has held so far.
func (u *MemoryUse) Peak() float64 { return u.peak }

func (u *MemoryUse) samples(mb int) float64 {
	if mb < 0 || mb >= len(u.plan.Microbatches) {
		return 0
	}
	return float64(u.plan.Microbatches[mb].Samples)
}

func (u *MemoryUse) cell(a Action) (int, *StageMemory, bool) {
	if a.Stage < 0 || a.Stage >= len(u.stages) || a.Microbatch < 0 || a.Microbatch >= len(u.plan.Microbatches) {
		return 0, nil, false
	}
	return a.Microbatch*len(u.stages) + a.Stage, &u.stages[a.Stage], true
}

// Start applies what a (both halves of an overlapped pair) allocates when
// it starts and returns the bytes held then: a forward reserves what it
// will keep, a recomputing backward the recomputed activations, a loss
// its logits.
func (u *MemoryUse) Start(a Action) float64 {
	f, b, pair := a.Halves()
	u.start(f)
	if pair {
		u.start(b)
	}
	u.peak = max(u.peak, u.cur)
	return u.cur
}

func (u *MemoryUse) start(a Action) {
	k, s, ok := u.cell(a)
	if !ok {
		return
	}
	n := u.samples(a.Microbatch)
	switch a.Kind {
	case Forward:
		keep := s.Activations * n
		if u.plan.Recompute {
			keep = s.Input * n
		}
		u.held[k] += keep
		u.cur += keep
	case Backward, BackwardInput:
		if u.plan.Recompute {
			// The recomputed set shares the stage input already held.
			re := max(s.Activations-s.Input, 0) * n
			u.held[k] += re
			u.cur += re
		}
	case Loss:
		u.cur += s.Loss * n
	}
}

// Finish applies what a releases when it ends and returns the bytes held
// then: a full backward frees its microbatch's stage activations, an
// input gradient all but what its deferred weight gradient needs, the
// weight gradient the rest.
func (u *MemoryUse) Finish(a Action) float64 {
	f, b, pair := a.Halves()
	u.finish(f)
	if pair {
		u.finish(b)
	}
	return u.cur
}

func (u *MemoryUse) finish(a Action) {
	k, s, ok := u.cell(a)
	if !ok {
		return
	}
	n := u.samples(a.Microbatch)
	release := func(keep float64) {
		if h := u.held[k]; h > keep {
			u.cur -= h - keep
			u.held[k] = keep
		}
		if u.held[k] == 0 {
			delete(u.held, k)
		}
	}
	switch a.Kind {
	case Backward, BackwardWeight:
		release(0)
	case BackwardInput:
		if u.ix.splitW[k] {
			release(s.WeightGrad * n)
		} else {
			release(0)
		}
	case Loss:
		u.cur -= s.Loss * n
	}
}

// MemoryPeak is where a worker's bytes peak when its program runs.
type MemoryPeak struct {
	Worker int
	Bytes  float64
	// Static is the part held throughout (parameters, gradients,
	// optimizer state).
	Static float64
	// Position is the program index of the action that reached the peak
	// (-1: the static bytes alone).
	Position int
}

// MemoryPeaks runs every worker's program in order under stages and
// returns each worker's peak bytes and the action that reaches it.
func MemoryPeaks(p *Plan, stages []StageMemory) ([]MemoryPeak, error) {
	ix := NewIndex(p)
	out := make([]MemoryPeak, len(p.Workers))
	for w, prog := range p.Programs {
		u, err := NewMemoryUse(ix, w, stages)
		if err != nil {
			return nil, err
		}
		out[w] = MemoryPeak{Worker: w, Bytes: u.Static(), Static: u.Static(), Position: -1}
		for pos, a := range prog {
			if b := u.Start(a); b > out[w].Bytes {
				out[w].Bytes, out[w].Position = b, pos
			}
			u.Finish(a)
		}
	}
	return out, nil
}

// ValidateMemory checks that no worker of p needs more bytes than its
// capacity (capacity[w]; 0 or a missing entry is unbounded) under stages.
// A plan over the limit is a *ValidationError of RuleMemory naming the
// worker, the action at which it first goes over, the bytes it needs there
// and by how much they exceed the capacity. Run Validate first.
func ValidateMemory(p *Plan, stages []StageMemory, capacity []float64) error {
	ix := NewIndex(p)
	for w, prog := range p.Programs {
		if w >= len(capacity) || capacity[w] <= 0 {
			continue
		}
		limit := capacity[w]
		u, err := NewMemoryUse(ix, w, stages)
		if err != nil {
			return verr(w, nil, RuleStructure, "%v", err)
		}
		if u.Static() > limit {
			return verr(w, nil, RuleMemory, "needs %s for parameters, gradients and optimizer state alone, %s over its %s",
				FormatBytes(u.Static()), FormatBytes(u.Static()-limit), FormatBytes(limit))
		}
		for pos := range prog {
			a := &prog[pos]
			if b := u.Start(*a); b > limit {
				return verr(w, a, RuleMemory, "needs %s at action %d of its program, %s over its %s",
					FormatBytes(b), pos, FormatBytes(b-limit), FormatBytes(limit))
			}
			u.Finish(*a)
		}
	}
	return nil
}

// FormatBytes renders a byte count in binary units to about three
// significant figures ("1.50 GiB", "12.5 MiB", "512 B").
func FormatBytes(b float64) string {
	units := []string{"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"}
	i := 0
	for ; i+1 < len(units) && (b >= 1024 || b <= -1024); i++ {
		b /= 1024
	}
	switch {
	case i == 0:
		return fmt.Sprintf("%.0f B", b)
	case math.Abs(b) >= 100:
		return fmt.Sprintf("%.0f %s", b, units[i])
	case math.Abs(b) >= 10:
		return fmt.Sprintf("%.1f %s", b, units[i])
	}
	return fmt.Sprintf("%.2f %s", b, units[i])
}
