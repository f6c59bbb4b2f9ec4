package scheduler

import "fmt"

// Vacant stages. When every worker of a stage is lost, a skipping plan
// can carry on without it: the stage stays in Plan.Stages (the model's
// layer split does not change) but no worker holds it and no path visits
// it, as if every microbatch skipped it, until a worker takes it over.
// Skip rules count stages over the occupied ones only: a hop over a
// vacant stage is a jump of one, and a swap across it is adjacent.

// VacantStages lists the stages no worker holds.
func (p *Plan) VacantStages() []int {
	var out []int
	for s, ws := range p.StageWorkers() {
		if len(ws) == 0 {
			out = append(out, s)
		}
	}
	return out
}

// ExpandStages renumbers p, a skipping plan made over some of a model's
// stages, into the whole list: p's stage i becomes stages[keep[i]] (its
// all-reduce algorithm carried over), and the stages keep leaves out are
// vacant. keep must ascend and start with stage 0, which holds the
// microbatches' origins and loss and is never vacant. p is not modified.
func ExpandStages(p *Plan, stages []Stage, keep []int) (*Plan, error) {
	if p.Skip == nil {
		return nil, fmt.Errorf("scheduler: expand stages: only skipping plans may leave stages vacant")
	}
	if len(keep) != len(p.Stages) {
		return nil, fmt.Errorf("scheduler: expand stages: keep names %d stages, the plan has %d", len(keep), len(p.Stages))
	}
	for i, s := range keep {
		if s < 0 || s >= len(stages) || i > 0 && s <= keep[i-1] || i == 0 && s != 0 {
			return nil, fmt.Errorf("scheduler: expand stages: keep[%d] is %d; want ascending stages of 0..%d starting at 0", i, s, len(stages)-1)
		}
	}
	remap := func(s int) int {
		if s >= 0 && s < len(keep) {
			return keep[s]
		}
		return s
	}
	q := *p
	q.Stages = append([]Stage(nil), stages...)
	for i, st := range p.Stages {
		q.Stages[keep[i]].AllReduce = st.AllReduce
	}
	q.Workers = make([]Worker, len(p.Workers))
	for w, wk := range p.Workers {
		wk.Stages = append([]int(nil), wk.Stages...)
		for i, s := range wk.Stages {
			wk.Stages[i] = remap(s)
		}
		q.Workers[w] = wk
	}
	q.Microbatches = make([]Microbatch, len(p.Microbatches))
	for mb, m := range p.Microbatches {
		m.Path = append([]Hop(nil), m.Path...)
		for i := range m.Path {
			m.Path[i].Stage = remap(m.Path[i].Stage)
		}
		q.Microbatches[mb] = m
	}
	q.Programs = make([][]Action, len(p.Programs))
	for w, prog := range p.Programs {
		q.Programs[w] = append([]Action(nil), prog...)
		for i := range q.Programs[w] {
			q.Programs[w][i].Stage = remap(q.Programs[w][i].Stage)
		}
	}
	r := *p.Skip
	q.Skip = &r
	return &q, nil
}

// occupiedRank maps each stage to its position among the stages some
// worker holds (vacant stages share the rank of the next occupied one).
func occupiedRank(p *Plan) []int {
	sw := p.StageWorkers()
	rank := make([]int, len(sw))
	r := 0
	for s, ws := range sw {
		rank[s] = r
		if len(ws) > 0 {
			r++
		}
	}
	return rank
}
