package sim

import (
	"container/heap"
	"errors"
	"fmt"

	"stagecoach/costmodel"
	"stagecoach/scheduler"
)

// Options tune one simulation.
type Options struct {
	// Iterations runs the plan this many times back to back (0 means 1).
	Iterations int
	// Overlap drops the end-of-step barrier: a worker starts its next
	// iteration as soon as its own program is done (zero-bubble schedules
	// need this to reach zero bubble).
	Overlap bool
	// Detail records every slice of compute and communication (for traces
	// and Gantt charts) and the critical path. It costs memory on huge runs.
	Detail bool
	// MemoryTimeline records every worker's bytes over time
	// (Result.Memory, for memory plots): two points per action.
	MemoryTimeline bool
}

type eventKind uint8

const (
	evDone eventKind = iota + 1
	evArrive
)

type event struct {
	t      float64
	seq    uint64
	kind   eventKind
	worker int
	iter   int
	msg    scheduler.Message
	sender int // slice index of the action that sent msg, -1 if none
}

type eventQueue []event

func (q eventQueue) Len() int { return len(q) }
func (q eventQueue) Less(i, j int) bool {
	if q[i].t != q[j].t {
		return q[i].t < q[j].t
	}
	return q[i].seq < q[j].seq
}
func (q eventQueue) Swap(i, j int) { q[i], q[j] = q[j], q[i] }
func (q *eventQueue) Push(x any)   { *q = append(*q, x.(event)) }
func (q *eventQueue) Pop() any {
	old := *q
	e := old[len(old)-1]
	*q = old[:len(old)-1]
	return e
}

type arrival struct {
	t      float64
	sender int
}

type workerState struct {
	ms       []*scheduler.Machine // one per iteration
	iter     int
	busy     bool
	act      scheduler.Action
	start    float64
	cause    int // slice that enabled the running action, -1 if none
	lastEnd  float64
	lastSl   int
	nodeIdx  int
	node     *Node
	compute  float64
	comm     float64
	first    float64
	started  bool
	bytes    float64
	arrivals map[arrivalKey]arrival
	waiting  bool // parked at an iteration barrier
	mem      *scheduler.MemoryUse
	memPeakT float64 // when mem first reached its peak
	memCap   float64 // the node's memory in bytes, 0: unbounded
	memOver  float64 // when the bytes first went over memCap, -1: never
	memT     []float64
	memB     []float64
}

type arrivalKey struct {
	iter int
	tag  scheduler.Tag
}

type barrierKey struct{ iter, stage int }

type barrier struct {
	arrived []int
}

type engine struct {
	plan    *scheduler.Plan
	ix      *scheduler.Index
	c       *Cluster
	opt     Options
	now     float64
	seq     uint64
	q       eventQueue
	ws      []*workerState
	replica [][]int
	links   map[[2]int]float64 // directed worker pair -> link free time
	nics    map[string]float64 // node -> its interface's free time (egress limits)
	sent    map[[2]int]float64 // directed worker pair -> bytes
	bars    map[barrierKey]*barrier
	iterEnd []int // workers done with each iteration
	slices  []Slice
	events  int64
}

// Run executes p against cluster c and measures it. The plan must be
// valid (scheduler.Validate); the cluster is validated here.
func Run(p *scheduler.Plan, c *Cluster, opt Options) (*Result, error) {
	if p == nil || c == nil {
		return nil, errors.New("sim: nil plan or cluster")
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	if opt.Iterations < 0 {
		return nil, fmt.Errorf("iterations is %d, want >= 1", opt.Iterations)
	}
	if opt.Iterations == 0 {
		opt.Iterations = 1
	}
	if len(c.Compute.StageForwardS) > 0 && len(c.Compute.StageForwardS) != len(p.Stages) {
		return nil, fmt.Errorf("cluster %q: compute.stage_forward_s has %d entries, the plan has %d stages", c.Name, len(c.Compute.StageForwardS), len(p.Stages))
	}
	e := &engine{
		plan: p, ix: scheduler.NewIndex(p), c: c, opt: opt,
		replica: p.StageWorkers(),
		links:   map[[2]int]float64{},
		nics:    map[string]float64{},
		sent:    map[[2]int]float64{},
		bars:    map[barrierKey]*barrier{},
		iterEnd: make([]int, opt.Iterations),
	}
	stageMem, err := StageMemories(p, c)
	if err != nil {
		return nil, err
	}
	e.ws = make([]*workerState, len(p.Workers))
	for w := range p.Workers {
		idx, nd, err := c.Lookup(p.Workers[w].Node)
		if err != nil {
			return nil, fmt.Errorf("plan worker %d: %w", w, err)
		}
		st := &workerState{nodeIdx: idx, node: nd, cause: -1, lastSl: -1, arrivals: map[arrivalKey]arrival{}, memCap: c.CapacityBytes(nd), memOver: -1}
		if st.mem, err = scheduler.NewMemoryUse(e.ix, w, stageMem); err != nil {
			return nil, fmt.Errorf("plan worker %d: %w", w, err)
		}
		e.memPoint(st, st.mem.Bytes())
		st.ms = make([]*scheduler.Machine, opt.Iterations)
		for it := range st.ms {
			st.ms[it] = scheduler.NewMachine(e.ix, w)
		}
		e.ws[w] = st
	}
	for w := range e.ws {
		e.tryStart(w)
	}
	for e.q.Len() > 0 {
		ev := heap.Pop(&e.q).(event)
		e.now = ev.t
		e.events++
		switch ev.kind {
		case evDone:
			e.finish(ev.worker)
		case evArrive:
			st := e.ws[ev.worker]
			if err := st.ms[ev.iter].Deliver(ev.msg); err != nil {
				return nil, err
			}
			if opt.Detail {
				st.arrivals[arrivalKey{ev.iter, ev.msg.Tag()}] = arrival{ev.t, ev.sender}
			}
			e.tryStart(ev.worker)
		}
	}
	for w, st := range e.ws {
		if st.iter < opt.Iterations {
			m := st.ms[st.iter]
			return nil, fmt.Errorf("simulation stuck: worker %d stopped at action %d of iteration %d (plan not validated?)", w, m.PC(), st.iter)
		}
	}
	return e.result(), nil
}

// memPoint notes the worker's bytes now: the first time they go over the
// node's capacity and, with Options.MemoryTimeline, a point of the curve.
func (e *engine) memPoint(st *workerState, b float64) {
	if st.memCap > 0 && b > st.memCap && st.memOver < 0 {
		st.memOver = e.now
	}
	if e.opt.MemoryTimeline {
		st.memT = append(st.memT, e.now)
		st.memB = append(st.memB, b)
	}
}

func (e *engine) push(ev event) {
	ev.seq = e.seq
	e.seq++
	heap.Push(&e.q, ev)
}

// tryStart starts the worker's next action if it may run now.
func (e *engine) tryStart(w int) {
	st := e.ws[w]
	if st.busy || st.waiting || st.iter >= e.opt.Iterations {
		return
	}
	m := st.ms[st.iter]
	a, ok := m.Start()
	if !ok {
		return
	}
	st.busy = true
	st.act = a
	st.start = e.now
	if a.Kind != scheduler.AllReduce && a.Kind != scheduler.OptimizerStep {
		peak := st.mem.Peak()
		if b := st.mem.Start(a); b > peak {
			st.memPeakT = e.now
		}
		e.memPoint(st, st.mem.Bytes())
	}
	if !st.started {
		st.started = true
		st.first = e.now
	}
	st.cause = st.lastSl
	if e.opt.Detail {
		// The latest arrival that came after the worker's previous
		// action ended is what held this one back.
		latest := st.lastEnd
		for _, t := range e.ix.Inputs(w, a) {
			if arr, ok := st.arrivals[arrivalKey{st.iter, t}]; ok {
				if arr.t >= latest {
					st.cause, latest = arr.sender, arr.t
				}
				delete(st.arrivals, arrivalKey{st.iter, t})
			}
		}
	}
	if a.Kind == scheduler.AllReduce && len(e.replica[a.Stage]) > 1 {
		k := barrierKey{st.iter, a.Stage}
		b := e.bars[k]
		if b == nil {
			b = &barrier{}
			e.bars[k] = b
		}
		b.arrived = append(b.arrived, w)
		if len(b.arrived) < len(e.replica[a.Stage]) {
			return
		}
		delete(e.bars, k)
		d := e.allReduceTime(a.Stage)
		for _, r := range b.arrived {
			e.ws[r].start = e.now // waiting for the others was idle time
			e.push(event{t: e.now + d, kind: evDone, worker: r})
		}
		return
	}
	e.push(event{t: e.now + e.computeTime(w, a), kind: evDone, worker: w})
}

func (e *engine) finish(w int) {
	st := e.ws[w]
	m := st.ms[st.iter]
	a := st.act
	dur := e.now - st.start
	if a.Kind == scheduler.AllReduce {
		st.comm += dur
	} else {
		st.compute += dur
	}
	sl := -1
	if e.opt.Detail {
		sl = len(e.slices)
		e.slices = append(e.slices, Slice{Worker: w, Track: TrackCompute, Action: a, Iteration: st.iter, Start: st.start, End: e.now, Pred: st.cause, To: -1})
	}
	st.lastEnd = e.now
	st.lastSl = sl
	st.busy = false
	if a.Kind != scheduler.AllReduce && a.Kind != scheduler.OptimizerStep {
		e.memPoint(st, st.mem.Finish(a))
	}
	for _, msg := range m.Finish() {
		e.send(w, st.iter, msg, sl)
	}
	if m.Done() {
		e.endIteration(w)
	}
	e.tryStart(w)
}

func (e *engine) endIteration(w int) {
	st := e.ws[w]
	it := st.iter
	e.iterEnd[it]++
	if e.opt.Overlap || it+1 == e.opt.Iterations {
		st.iter++
		return
	}
	st.waiting = true
	if e.iterEnd[it] < len(e.ws) {
		return
	}
	// Everyone finished this iteration: release the barrier.
	for r, o := range e.ws {
		o.waiting = false
		o.iter++
		if r != w {
			e.tryStart(r)
		}
	}
}

func (e *engine) send(w, iter int, msg scheduler.Message, sl int) {
	mb := &e.plan.Microbatches[msg.Microbatch]
	bytes := e.c.MessageBytes(float64(mb.Samples) * e.c.Compute.ActivationBytesPerSample)
	from, to := e.ws[w], e.ws[msg.To]
	key := [2]int{w, msg.To}
	link, nic := e.links[key], e.nics[from.node.Name]
	start, arrive := e.c.Price(from.nodeIdx, to.nodeIdx, from.node, to.node, bytes).Schedule(e.now, &link, &nic)
	e.links[key], e.nics[from.node.Name] = link, nic
	if from.node.Name != to.node.Name {
		e.sent[key] += bytes
		from.bytes += bytes
	}
	if e.opt.Detail && arrive > e.now {
		e.slices = append(e.slices, Slice{Worker: w, Track: TrackComm, Action: scheduler.Action{Kind: 0, Microbatch: msg.Microbatch, Stage: msg.Stage}, Tensor: msg.Kind, Iteration: iter, Start: start, End: arrive, Pred: sl, To: msg.To, Bytes: bytes})
		sl = len(e.slices) - 1
	}
	e.push(event{t: arrive, kind: evArrive, worker: msg.To, iter: iter, msg: msg, sender: sl})
}

// computeTime prices action a on worker w.
func (e *engine) computeTime(w int, a scheduler.Action) float64 {
	k := &e.c.Compute
	if f, b, ok := a.Halves(); ok {
		tf, tb := e.computeTime(w, f), e.computeTime(w, b)
		return tf + tb - k.FBOverlap*min(tf, tb)
	}
	st := e.ws[w]
	layerF := func(stage int) float64 {
		if len(k.StageForwardS) > 0 {
			return k.StageForwardS[stage]
		}
		return float64(e.plan.Stages[stage].Layers) * k.LayerForwardS
	}
	samples := 1.0
	if a.Microbatch >= 0 {
		samples = float64(e.plan.Microbatches[a.Microbatch].Samples)
	}
	var t float64
	switch a.Kind {
	case scheduler.Forward:
		t = layerF(a.Stage) * samples
	case scheduler.Backward:
		t = layerF(a.Stage) * samples * k.BackwardRatio
		if e.plan.Recompute {
			t += layerF(a.Stage) * samples
		}
	case scheduler.BackwardInput:
		t = layerF(a.Stage) * samples * k.InputGradRatio
		if e.plan.Recompute {
			t += layerF(a.Stage) * samples
		}
	case scheduler.BackwardWeight:
		t = layerF(a.Stage) * samples * k.WeightGradRatio
	case scheduler.Loss:
		t = k.LossLayers * k.LayerForwardS * samples
	case scheduler.OptimizerStep:
		layers := 0
		for _, s := range e.plan.Workers[w].Stages {
			layers += e.plan.Stages[s].Layers
		}
		t = k.OptimizerLayerS * float64(layers)
	}
	return t / st.node.Speed
}

// allReduceTime prices the all-reduce of a stage's gradients over its
// replicas with the algorithm the plan names (see allreduce.go).
func (e *engine) allReduceTime(stage int) float64 {
	rs := e.replica[stage]
	if len(rs) < 2 {
		return 0
	}
	nodes := make([]costmodel.Place, len(rs))
	for i, w := range rs {
		nodes[i] = costmodel.Place{Index: e.ws[w].nodeIdx, Node: e.ws[w].node}
	}
	return e.c.AllReducePlaced(e.plan, stage, nodes)
}
