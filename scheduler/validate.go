package scheduler

import (
	"fmt"
	"sort"
)

// Rules a plan can break; each ValidationError names one.
const (
	RuleStructure  = "structure"        // malformed topology, path or program
	RuleCoverage   = "coverage"         // an action missing or repeated
	RuleOrder      = "dependency-order" // backward before forward, W before I, ...
	RuleDeadlock   = "deadlock"         // some action waits forever
	RuleMemory     = "memory"           // more activations in flight than the worker holds
	RuleAllReduce  = "allreduce"        // replicas not all-reducing, step misplaced
	RuleSkipLength = "skip-path-length" // paths visit different numbers of stages
	RuleSkipOrigin = "skip-origin"      // a path not starting at stage 0
	RuleSkipRepeat = "skip-repeat"      // a stage visited twice
	RuleSkipSwap   = "skip-swap"        // a swap too far back, or too many
	RuleSkipJump   = "skip-jump"        // a forward hop over too many stages
	RuleSkipCap    = "skip-capacity"    // too many paths through a worker or stage
)

// Limits that keep a hostile plan from exhausting memory.
const (
	MaxStages       = 1 << 12
	MaxWorkers      = 1 << 14
	MaxMicrobatches = 1 << 20
	// MaxStageMicrobatchCells bounds stages times microbatches: the
	// cells of the per-stage, per-microbatch tables that the validator,
	// the SkipPipe planner and the PyTorch CSV import keep.
	MaxStageMicrobatchCells = 1 << 25
	MaxActions              = 1 << 25
)

// ValidationError says which rule a plan breaks, and where.
type ValidationError struct {
	Worker int    // -1 when the error is not about one worker
	Action string // the action, e.g. "F3@s1", or ""
	Rule   string
	Detail string
}

func (e *ValidationError) Error() string {
	where := ""
	if e.Worker >= 0 {
		where = fmt.Sprintf("worker %d", e.Worker)
		if e.Action != "" {
			where += " action " + e.Action
		}
		where += ": "
	}
	return fmt.Sprintf("invalid plan: %s%s: %s", where, e.Rule, e.Detail)
}

func verr(worker int, a *Action, rule, format string, args ...any) error {
	e := &ValidationError{Worker: worker, Rule: rule, Detail: fmt.Sprintf(format, args...)}
	if a != nil {
		e.Action = a.String()
	}
	return e
}

// Validate checks that p is well formed, that every action runs exactly
// once in a legal order, that the programs together cannot deadlock
// (checked by executing them symbolically), that no worker holds more
// activations than its memory, and, for skipping plans, the SkipPipe path
// rules. The first broken rule is returned as a *ValidationError.
func Validate(p *Plan) error {
	if err := validateStructure(p); err != nil {
		return err
	}
	if err := validatePaths(p); err != nil {
		return err
	}
	if err := validatePrograms(p); err != nil {
		return err
	}
	ix := NewIndex(p)
	return validateExecution(ix)
}

func validateStructure(p *Plan) error {
	if p == nil {
		return verr(-1, nil, RuleStructure, "plan is nil")
	}
	if p.Version != FormatVersion {
		return verr(-1, nil, RuleStructure, "version is %d, want %d", p.Version, FormatVersion)
	}
	ns := len(p.Stages)
	if ns < 1 || ns > MaxStages {
		return verr(-1, nil, RuleStructure, "stages: have %d, want 1..%d", ns, MaxStages)
	}
	next := 0
	for i, s := range p.Stages {
		if s.Layers < 1 {
			return verr(-1, nil, RuleStructure, "stages[%d].layers is %d, want >= 1", i, s.Layers)
		}
		if s.FirstLayer != next {
			return verr(-1, nil, RuleStructure, "stages[%d].first_layer is %d, want %d (stages are contiguous)", i, s.FirstLayer, next)
		}
		if a := s.AllReduce; a != "" && a != AllReduceRing && a != AllReduceDirect && a != AllReduceOrdered {
			return verr(-1, nil, RuleAllReduce, "stage %d: all_reduce is %q, want %q, %q, %q or empty (ring)", i, a, AllReduceRing, AllReduceDirect, AllReduceOrdered)
		}
		next += s.Layers
	}
	if p.HeadStage != 0 && p.HeadStage != ns-1 {
		return verr(-1, nil, RuleStructure, "head_stage is %d, want 0 or %d", p.HeadStage, ns-1)
	}
	nw := len(p.Workers)
	if nw < 1 || nw > MaxWorkers {
		return verr(-1, nil, RuleStructure, "workers: have %d, want 1..%d", nw, MaxWorkers)
	}
	replicas := make([]map[int]int, ns)
	for w, wk := range p.Workers {
		if len(wk.Stages) == 0 || len(wk.Stages) > ns {
			return verr(w, nil, RuleStructure, "holds %d stages, want 1..%d", len(wk.Stages), ns)
		}
		if wk.Memory < 0 {
			return verr(w, nil, RuleStructure, "memory is %d, want >= 0", wk.Memory)
		}
		if wk.Replica < 0 {
			return verr(w, nil, RuleStructure, "replica is %d, want >= 0", wk.Replica)
		}
		for _, s := range wk.Stages {
			if s < 0 || s >= ns {
				return verr(w, nil, RuleStructure, "holds stage %d, which does not exist (stages 0..%d)", s, ns-1)
			}
			if replicas[s] == nil {
				replicas[s] = map[int]int{}
			}
			if other, dup := replicas[s][wk.Replica]; dup {
				if other == w {
					return verr(w, nil, RuleStructure, "lists stage %d twice", s)
				}
				return verr(w, nil, RuleStructure, "is replica %d of stage %d, as is worker %d", wk.Replica, s, other)
			}
			replicas[s][wk.Replica] = w
		}
	}
	for s := range replicas {
		// A skipping plan may leave a stage other than 0 vacant (see
		// vacant.go); no path can visit it, since no worker holds it.
		if len(replicas[s]) == 0 && (p.Skip == nil || s == 0) {
			return verr(-1, nil, RuleStructure, "stage %d is held by no worker", s)
		}
	}
	nm := len(p.Microbatches)
	if nm < 1 || nm > MaxMicrobatches {
		return verr(-1, nil, RuleStructure, "microbatches: have %d, want 1..%d", nm, MaxMicrobatches)
	}
	if nm*ns > MaxStageMicrobatchCells {
		return verr(-1, nil, RuleStructure, "%d microbatches x %d stages is too large (max %d)", nm, ns, MaxStageMicrobatchCells)
	}
	if len(p.Programs) != nw {
		return verr(-1, nil, RuleStructure, "programs: have %d, want one per worker (%d)", len(p.Programs), nw)
	}
	total := 0
	for _, pr := range p.Programs {
		total += len(pr)
	}
	if total > MaxActions {
		return verr(-1, nil, RuleStructure, "%d actions in all, max %d", total, MaxActions)
	}
	return nil
}

func holds(wk *Worker, stage int) bool {
	for _, s := range wk.Stages {
		if s == stage {
			return true
		}
	}
	return false
}

func validatePaths(p *Plan) error {
	ns := len(p.Stages)
	nw := len(p.Workers)
	seen := make([]int, ns) // seen[stage] = mb+1 when mb visited it
	for mb := range p.Microbatches {
		m := &p.Microbatches[mb]
		if m.Samples < 1 {
			return verr(-1, nil, RuleStructure, "microbatches[%d].samples is %d, want >= 1", mb, m.Samples)
		}
		if len(m.Path) == 0 || len(m.Path) > ns {
			return verr(-1, nil, RuleStructure, "microbatches[%d].path has %d hops, want 1..%d", mb, len(m.Path), ns)
		}
		for i, h := range m.Path {
			if h.Worker < 0 || h.Worker >= nw {
				return verr(-1, nil, RuleStructure, "microbatches[%d].path[%d].worker is %d, want 0..%d", mb, i, h.Worker, nw-1)
			}
			if h.Stage < 0 || h.Stage >= ns {
				return verr(-1, nil, RuleStructure, "microbatches[%d].path[%d].stage is %d, want 0..%d", mb, i, h.Stage, ns-1)
			}
			if !holds(&p.Workers[h.Worker], h.Stage) {
				return verr(h.Worker, nil, RuleStructure, "microbatch %d visits it for stage %d, which it does not hold", mb, h.Stage)
			}
			if seen[h.Stage] == mb+1 {
				return verr(h.Worker, nil, RuleSkipRepeat, "microbatch %d visits stage %d twice", mb, h.Stage)
			}
			seen[h.Stage] = mb + 1
		}
		if m.Path[0].Stage != 0 {
			return verr(m.Path[0].Worker, nil, RuleSkipOrigin, "microbatch %d starts at stage %d, want stage 0", mb, m.Path[0].Stage)
		}
		if m.LossWorker < 0 || m.LossWorker >= nw {
			return verr(-1, nil, RuleStructure, "microbatches[%d].loss_worker is %d, want 0..%d", mb, m.LossWorker, nw-1)
		}
		if !holds(&p.Workers[m.LossWorker], p.HeadStage) {
			return verr(m.LossWorker, nil, RuleStructure, "computes the loss of microbatch %d but does not hold the head stage %d", mb, p.HeadStage)
		}
		if p.HeadStage == 0 && m.LossWorker != m.Path[0].Worker {
			return verr(m.LossWorker, nil, RuleStructure, "computes the loss of microbatch %d, whose origin is worker %d (the head is on stage 0)", mb, m.Path[0].Worker)
		}
		if p.Skip == nil {
			if len(m.Path) != ns {
				return verr(-1, nil, RuleSkipLength, "microbatch %d visits %d of %d stages but the plan has no skip rules", mb, len(m.Path), ns)
			}
			for i, h := range m.Path {
				if h.Stage != i {
					return verr(h.Worker, nil, RuleSkipSwap, "microbatch %d visits stage %d at hop %d but the plan has no skip rules", mb, h.Stage, i)
				}
			}
			if p.HeadStage == ns-1 && m.LossWorker != m.Path[ns-1].Worker {
				return verr(m.LossWorker, nil, RuleStructure, "computes the loss of microbatch %d, whose last hop is worker %d", mb, m.Path[ns-1].Worker)
			}
		}
	}
	if p.Skip != nil {
		return validateSkipRules(p)
	}
	return nil
}

func validateSkipRules(p *Plan) error {
	r := p.Skip
	ns := len(p.Stages)
	if r.PathStages < 1 || r.PathStages > ns {
		return verr(-1, nil, RuleSkipLength, "skip.path_stages is %d, want 1..%d", r.PathStages, ns)
	}
	if r.MaxSwaps < 0 || r.SwapDistance < 0 || r.MaxJump < 1 {
		return verr(-1, nil, RuleStructure, "skip rules need max_swaps >= 0, swap_distance >= 0, max_jump >= 1")
	}
	if p.HeadStage != 0 {
		return verr(-1, nil, RuleSkipOrigin, "skipping plans keep the head on stage 0 (head_stage is %d)", p.HeadStage)
	}
	if r.MaxPerWorker < 0 {
		return verr(-1, nil, RuleStructure, "skip.max_per_worker is %d, want >= 0", r.MaxPerWorker)
	}
	perWorker := make([]int, len(p.Workers))
	perStage := make([]int, ns)
	// Distances count occupied stages only: vacant ones are skipped by
	// every path and do not lengthen a jump or a swap.
	rank := occupiedRank(p)
	for mb := range p.Microbatches {
		path := p.Microbatches[mb].Path
		if len(path) != r.PathStages {
			origin := F(mb, 0)
			return verr(path[0].Worker, &origin, RuleSkipLength, "microbatch %d visits %d stages, every path must visit %d", mb, len(path), r.PathStages)
		}
		furthest, swaps := 0, 0
		for i := 1; i < len(path); i++ {
			s := path[i].Stage
			hop := F(mb, s)
			if s == 0 {
				return verr(path[i].Worker, &hop, RuleSkipRepeat, "microbatch %d returns to stage 0 at hop %d", mb, i)
			}
			if s < furthest {
				swaps++
				if rank[furthest]-rank[s] > r.SwapDistance {
					return verr(path[i].Worker, &hop, RuleSkipSwap, "microbatch %d goes back from stage %d to %d, more than %d", mb, furthest, s, r.SwapDistance)
				}
				if swaps > r.MaxSwaps {
					return verr(path[i].Worker, &hop, RuleSkipSwap, "microbatch %d swaps %d times, at most %d allowed", mb, swaps, r.MaxSwaps)
				}
			}
			if jump := rank[s] - rank[path[i-1].Stage]; jump > r.MaxJump {
				return verr(path[i].Worker, &hop, RuleSkipJump, "microbatch %d jumps from stage %d to %d, more than %d", mb, path[i-1].Stage, s, r.MaxJump)
			}
			if s > furthest {
				furthest = s
			}
			perWorker[path[i].Worker]++
			perStage[s]++
		}
	}
	if r.MaxPerWorker > 0 {
		sw := p.StageWorkers()
		for w, n := range perWorker {
			if n > r.MaxPerWorker {
				return verr(w, nil, RuleSkipCap, "%d microbatches pass through it, at most %d allowed", n, r.MaxPerWorker)
			}
		}
		for s := 1; s < ns; s++ {
			if cap := len(sw[s]) * r.MaxPerWorker; perStage[s] > cap {
				return verr(-1, nil, RuleSkipCap, "%d microbatches pass through stage %d, at most %d allowed", perStage[s], s, cap)
			}
		}
	}
	return nil
}

// actionSlots records where each (microbatch, stage) action sits.
type actionSlots struct {
	f, b, i, w []int32 // program position, -1 if absent
}

func validatePrograms(p *Plan) error {
	ns := len(p.Stages)
	nm := len(p.Microbatches)
	cells := nm * ns
	sl := actionSlots{make([]int32, cells), make([]int32, cells), make([]int32, cells), make([]int32, cells)}
	for _, a := range [][]int32{sl.f, sl.b, sl.i, sl.w} {
		for k := range a {
			a[k] = -1
		}
	}
	lossAt := make([]int32, nm)
	for k := range lossAt {
		lossAt[k] = -1
	}
	ix := NewIndex(p)
	sw := p.StageWorkers()
	// slot records where a compute action (or half of an overlapped one)
	// stands in worker w's program.
	slot := func(w, pos int, a *Action) error {
		if a.Microbatch < 0 || a.Microbatch >= nm {
			return verr(w, a, RuleStructure, "microbatch %d does not exist (0..%d)", a.Microbatch, nm-1)
		}
		if a.Stage < 0 || a.Stage >= ns {
			return verr(w, a, RuleStructure, "stage %d does not exist (0..%d)", a.Stage, ns-1)
		}
		mbp := &p.Microbatches[a.Microbatch]
		if a.Kind == Loss {
			if w != mbp.LossWorker || a.Stage != p.HeadStage {
				return verr(w, a, RuleCoverage, "loss of microbatch %d belongs on worker %d stage %d", a.Microbatch, mbp.LossWorker, p.HeadStage)
			}
			if lossAt[a.Microbatch] >= 0 {
				return verr(w, a, RuleCoverage, "loss of microbatch %d computed twice", a.Microbatch)
			}
			lossAt[a.Microbatch] = int32(pos)
			return nil
		}
		h := ix.hopOf(a.Microbatch, a.Stage)
		if h < 0 || mbp.Path[h].Worker != w {
			return verr(w, a, RuleCoverage, "microbatch %d does not visit this worker for stage %d", a.Microbatch, a.Stage)
		}
		cell := a.Microbatch*ns + a.Stage
		var at []int32
		switch a.Kind {
		case Forward:
			at = sl.f
		case Backward:
			at = sl.b
		case BackwardInput:
			at = sl.i
		case BackwardWeight:
			at = sl.w
		}
		if at[cell] >= 0 {
			return verr(w, a, RuleCoverage, "appears twice in the program")
		}
		at[cell] = int32(pos)
		return nil
	}
	for w, prog := range p.Programs {
		wk := &p.Workers[w]
		reduced := map[int]int{}
		steps := 0
		for pos := range prog {
			a := &prog[pos]
			if !a.Kind.Valid() {
				return verr(w, nil, RuleStructure, "programs[%d][%d] has unknown kind %d", w, pos, a.Kind)
			}
			if a.Back != (Half{}) && a.Kind != Overlapped {
				return verr(w, a, RuleStructure, "only an overlapped action has a back half")
			}
			switch a.Kind {
			case AllReduce:
				if a.Microbatch != -1 || a.Stage < 0 || a.Stage >= ns || !holds(wk, a.Stage) {
					return verr(w, a, RuleAllReduce, "all-reduce must name a stage the worker holds and microbatch -1")
				}
				if _, dup := reduced[a.Stage]; dup {
					return verr(w, a, RuleAllReduce, "stage %d all-reduced twice", a.Stage)
				}
				reduced[a.Stage] = pos
				continue
			case OptimizerStep:
				if a.Microbatch != -1 || a.Stage != -1 {
					return verr(w, a, RuleStructure, "optimizer step takes microbatch -1 and stage -1")
				}
				if pos != len(prog)-1 {
					return verr(w, a, RuleAllReduce, "optimizer step at position %d is not the last action", pos)
				}
				steps++
				continue
			}
			if f, b, pair := a.Halves(); pair {
				if b.Kind != Backward && b.Kind != BackwardInput {
					return verr(w, a, RuleStructure, "the back half of an overlapped action is %v, want Backward or BackwardInput", b.Kind)
				}
				if b.Microbatch == f.Microbatch {
					return verr(w, a, RuleStructure, "an overlapped action pairs two microbatches; both halves are microbatch %d", f.Microbatch)
				}
				for _, h := range []Action{f, b} {
					if err := slot(w, pos, &h); err != nil {
						return err
					}
				}
				continue
			}
			if err := slot(w, pos, a); err != nil {
				return err
			}
		}
		if steps != 1 {
			return verr(w, nil, RuleAllReduce, "program must end with exactly one optimizer step (has %d)", steps)
		}
		for _, s := range wk.Stages {
			at, ok := reduced[s]
			if len(sw[s]) > 1 && !ok {
				return verr(w, nil, RuleAllReduce, "stage %d has %d replicas but this worker never all-reduces it", s, len(sw[s]))
			}
			if ok {
				// Every backward of the stage must come before the all-reduce.
				for pos := at + 1; pos < len(prog); pos++ {
					b := prog[pos]
					if b.Stage == s && (b.Kind == Backward || b.Kind == BackwardInput || b.Kind == BackwardWeight || b.Kind == Forward || b.Kind == Overlapped) || b.Kind == Overlapped && b.Back.Stage == s {
						a := R(s)
						return verr(w, &a, RuleAllReduce, "comes before %s", b)
					}
				}
			}
		}
	}
	// Coverage and order.
	for mb := range p.Microbatches {
		if lossAt[mb] < 0 {
			return verr(p.Microbatches[mb].LossWorker, nil, RuleCoverage, "loss of microbatch %d is never computed", mb)
		}
		for _, h := range p.Microbatches[mb].Path {
			cell := mb*ns + h.Stage
			fa, ba, ia, wa := sl.f[cell], sl.b[cell], sl.i[cell], sl.w[cell]
			if fa < 0 {
				a := F(mb, h.Stage)
				return verr(h.Worker, &a, RuleCoverage, "missing from the program")
			}
			switch {
			case ba >= 0 && (ia >= 0 || wa >= 0):
				a := B(mb, h.Stage)
				return verr(h.Worker, &a, RuleCoverage, "full backward and split backward both present")
			case ba < 0 && ia < 0:
				a := B(mb, h.Stage)
				return verr(h.Worker, &a, RuleCoverage, "missing from the program (no B or I)")
			case ba < 0 && wa < 0:
				a := W(mb, h.Stage)
				return verr(h.Worker, &a, RuleCoverage, "missing from the program (I without W)")
			case ba < 0 && ia < 0 && wa >= 0:
				a := W(mb, h.Stage)
				return verr(h.Worker, &a, RuleCoverage, "W without I")
			}
			bwd := ba
			if bwd < 0 {
				bwd = ia
			}
			if bwd < fa {
				a := p.Programs[h.Worker][bwd]
				return verr(h.Worker, &a, RuleOrder, "backward before its forward (position %d < %d)", bwd, fa)
			}
			if wa >= 0 && wa < ia {
				a := W(mb, h.Stage)
				return verr(h.Worker, &a, RuleOrder, "weight gradient before input gradient")
			}
		}
		m := &p.Microbatches[mb]
		last := m.Path[len(m.Path)-1]
		if m.LossWorker == last.Worker {
			if fa := sl.f[mb*ns+last.Stage]; lossAt[mb] < fa {
				a := L(mb, p.HeadStage)
				return verr(m.LossWorker, &a, RuleOrder, "loss before the last forward of its microbatch")
			}
		}
		if m.LossWorker == m.Path[0].Worker && p.HeadStage == 0 {
			cell := mb*ns + m.Path[0].Stage
			bwd := sl.b[cell]
			if bwd < 0 {
				bwd = sl.i[cell]
			}
			if bwd < lossAt[mb] || lossAt[mb] < sl.f[cell] {
				a := L(mb, p.HeadStage)
				return verr(m.LossWorker, &a, RuleOrder, "loss must come between the origin's forward and backward")
			}
		}
	}
	// Memory bound: in-flight activations depend on program order alone.
	for w, prog := range p.Programs {
		limit := p.Workers[w].Memory
		if limit == 0 {
			continue
		}
		n := 0
		// held applies one action (or half of a pair) to the count.
		held := func(h Action) bool {
			switch h.Kind {
			case Forward:
				n++
				return n <= limit
			case Backward, BackwardWeight:
				n--
			case BackwardInput:
				if sl.w[h.Microbatch*ns+h.Stage] < 0 {
					n--
				}
			}
			return true
		}
		for pos := range prog {
			a := &prog[pos]
			f, b, pair := a.Halves()
			if !held(f) || pair && !held(b) {
				return verr(w, a, RuleMemory, "%d activations in flight, memory holds %d", n, limit)
			}
		}
	}
	return nil
}

// validateExecution runs every program with zero-time actions and instant
// messages; any program left unfinished is deadlocked.
func validateExecution(ix *Index) error {
	p := ix.plan
	ms := make([]*Machine, len(p.Workers))
	for w := range ms {
		ms[w] = NewMachine(ix, w)
	}
	res, err := Execute(ix, ms)
	if err != nil {
		return err
	}
	if res == nil {
		return nil
	}
	a, tag, waiting := ms[res.Worker].Waiting()
	if waiting {
		from := senderOf(p, tag)
		detail := fmt.Sprintf("waits forever for %s from worker %d", tag, from)
		if from >= 0 && from < len(ms) {
			if b, ok := ms[from].current(); ok {
				detail += fmt.Sprintf(", which is itself stuck at %s", b)
			} else if ms[from].Done() {
				detail += ", which has finished without sending it"
			}
		}
		return verr(res.Worker, &a, RuleDeadlock, "%s", detail)
	}
	b, _ := ms[res.Worker].current()
	return verr(res.Worker, &b, RuleDeadlock, "all-reduce never completes: replicas %v of stage %d never reach it", res.Missing, b.Stage)
}

// current returns the action the machine is at (running or next).
func (m *Machine) current() (Action, bool) {
	if m.pc >= len(m.prog) {
		return Action{}, false
	}
	return m.prog[m.pc], true
}

// senderOf returns the worker that sends the message with tag t.
func senderOf(p *Plan, t Tag) int {
	if t.Microbatch < 0 || t.Microbatch >= len(p.Microbatches) {
		return -1
	}
	m := &p.Microbatches[t.Microbatch]
	switch t.Kind {
	case LossInput:
		return m.Path[len(m.Path)-1].Worker
	case Activation, Gradient:
		for i, h := range m.Path {
			if h.Stage != t.Stage {
				continue
			}
			if t.Kind == Activation && i > 0 {
				return m.Path[i-1].Worker
			}
			if t.Kind == Gradient {
				if i+1 < len(m.Path) {
					return m.Path[i+1].Worker
				}
				return m.LossWorker
			}
		}
	}
	return -1
}

// Stuck describes the first worker that cannot finish when programs are
// executed with zero-time actions.
type Stuck struct {
	Worker  int
	Missing []int // for an unfinished all-reduce: replicas that never reach it
}

// Execute runs machines to completion with zero-time actions and instant
// messages, all-reduces completing once every replica reaches them. It
// returns nil when every program finishes, or the lowest stuck worker.
func Execute(ix *Index, ms []*Machine) (*Stuck, error) {
	p := ix.plan
	sw := p.StageWorkers()
	atBarrier := make([]int, len(p.Stages)) // replicas waiting at AllReduce(stage)
	queue := make([]int, 0, len(ms))
	queued := make([]bool, len(ms))
	for w := range ms {
		queue = append(queue, w)
		queued[w] = true
	}
	push := func(w int) {
		if !queued[w] {
			queued[w] = true
			queue = append(queue, w)
		}
	}
	for len(queue) > 0 {
		w := queue[0]
		queue = queue[1:]
		queued[w] = false
		m := ms[w]
		for {
			a, ok := m.Start()
			if !ok {
				break
			}
			if a.Kind == AllReduce && len(sw[a.Stage]) > 1 {
				atBarrier[a.Stage]++
				if atBarrier[a.Stage] < len(sw[a.Stage]) {
					break // wait for the other replicas
				}
				atBarrier[a.Stage] = 0
				for _, r := range sw[a.Stage] {
					if r != w {
						ms[r].Finish()
						push(r)
					}
				}
			}
			for _, msg := range m.Finish() {
				if msg.To < 0 || msg.To >= len(ms) {
					return nil, verr(w, &a, RuleStructure, "sends to worker %d, which does not exist", msg.To)
				}
				if err := ms[msg.To].Deliver(msg); err != nil {
					return nil, verr(w, &a, RuleCoverage, "%v", err)
				}
				push(msg.To)
			}
		}
	}
	for w, m := range ms {
		if m.Done() {
			continue
		}
		st := &Stuck{Worker: w}
		if a, ok := m.current(); ok && m.running && a.Kind == AllReduce {
			for _, r := range sw[a.Stage] {
				if b, ok := ms[r].current(); !ok || b != a || !ms[r].running {
					st.Missing = append(st.Missing, r)
				}
			}
			sort.Ints(st.Missing)
		}
		return st, nil
	}
	return nil, nil
}
