package scheduler

import (
	"fmt"
)

// TensorKind says what a message carries.
type TensorKind uint8

// Tensor kinds. The zero value is invalid.
const (
	Activation TensorKind = 1 + iota // input of Forward(mb) on the receiving stage
	LossInput                        // last hidden state, input of Loss(mb)
	Gradient                         // gradient, input of the backward of (mb, stage)
)

func (k TensorKind) String() string {
	switch k {
	case Activation:
		return "activation"
	case LossInput:
		return "loss-input"
	case Gradient:
		return "gradient"
	}
	return fmt.Sprintf("TensorKind(%d)", k)
}

// Message is one tensor sent from one worker to another. It names the
// action that will consume it on the receiver: Stage is the stage of that
// action (the head stage for LossInput).
type Message struct {
	Kind       TensorKind
	Microbatch int
	Stage      int
	From, To   int
}

// Tag identifies a message's payload independent of its endpoints.
type Tag struct {
	Kind       TensorKind
	Microbatch int
	Stage      int
}

// Tag returns the payload identity of m.
func (m Message) Tag() Tag { return Tag{m.Kind, m.Microbatch, m.Stage} }

func (t Tag) String() string {
	return fmt.Sprintf("%s(mb=%d,stage=%d)", t.Kind, t.Microbatch, t.Stage)
}

// Index holds lookups derived from a Plan that every Machine of the plan
// shares. Build it once with NewIndex; it is read-only afterwards.
type Index struct {
	plan *Plan
	ns   int
	// hop[mb*ns+stage] is the position of stage in mb's path, or -1.
	hop []int32
	// splitW[mb*ns+stage] is set when some program holds W(mb)@stage, so
	// the input-gradient action does not free the activations.
	splitW []bool
}

// NewIndex builds the shared lookups for p. p must have passed the
// structural checks of Validate (or come from a generator).
func NewIndex(p *Plan) *Index {
	ns := len(p.Stages)
	ix := &Index{plan: p, ns: ns, hop: make([]int32, len(p.Microbatches)*ns)}
	for i := range ix.hop {
		ix.hop[i] = -1
	}
	ix.splitW = make([]bool, len(ix.hop))
	for _, prog := range p.Programs {
		for _, a := range prog {
			if a.Kind == BackwardWeight && a.Microbatch >= 0 && a.Microbatch < len(p.Microbatches) && a.Stage >= 0 && a.Stage < ns {
				ix.splitW[a.Microbatch*ns+a.Stage] = true
			}
		}
	}
	for mb := range p.Microbatches {
		for i, h := range p.Microbatches[mb].Path {
			if h.Stage >= 0 && h.Stage < ns {
				ix.hop[mb*ns+h.Stage] = int32(i)
			}
		}
	}
	return ix
}

// Plan returns the indexed plan.
func (ix *Index) Plan() *Plan { return ix.plan }

func (ix *Index) hopOf(mb, stage int) int {
	if mb < 0 || mb >= len(ix.plan.Microbatches) || stage < 0 || stage >= ix.ns {
		return -1
	}
	return int(ix.hop[mb*ix.ns+stage])
}

// Input is the message an action needs before it may start, if any. An
// Overlapped pair needs two: see Inputs.
func (ix *Index) Input(worker int, a Action) (Tag, bool) {
	switch a.Kind {
	case Forward:
		if ix.hopOf(a.Microbatch, a.Stage) > 0 {
			return Tag{Activation, a.Microbatch, a.Stage}, true
		}
	case Loss:
		return Tag{LossInput, a.Microbatch, a.Stage}, true
	case Backward, BackwardInput:
		return Tag{Gradient, a.Microbatch, a.Stage}, true
	}
	return Tag{}, false
}

// Output is the message an action sends when it finishes, if any. An
// Overlapped pair may send two: see Outputs.
func (ix *Index) Output(worker int, a Action) (Message, bool) {
	p := ix.plan
	switch a.Kind {
	case Forward:
		mb := &p.Microbatches[a.Microbatch]
		i := ix.hopOf(a.Microbatch, a.Stage)
		if i+1 < len(mb.Path) {
			n := mb.Path[i+1]
			return Message{Activation, a.Microbatch, n.Stage, worker, n.Worker}, true
		}
		return Message{LossInput, a.Microbatch, p.HeadStage, worker, mb.LossWorker}, true
	case Loss:
		mb := &p.Microbatches[a.Microbatch]
		last := mb.Path[len(mb.Path)-1]
		return Message{Gradient, a.Microbatch, last.Stage, worker, last.Worker}, true
	case Backward, BackwardInput:
		mb := &p.Microbatches[a.Microbatch]
		i := ix.hopOf(a.Microbatch, a.Stage)
		if i > 0 {
			prev := mb.Path[i-1]
			return Message{Gradient, a.Microbatch, prev.Stage, worker, prev.Worker}, true
		}
	}
	return Message{}, false
}

// Inputs lists the messages a needs before it may start: Input's, or both
// halves' for an Overlapped pair.
func (ix *Index) Inputs(worker int, a Action) []Tag {
	var out []Tag
	f, b, pair := a.Halves()
	if t, ok := ix.Input(worker, f); ok {
		out = append(out, t)
	}
	if pair {
		if t, ok := ix.Input(worker, b); ok {
			out = append(out, t)
		}
	}
	return out
}

// Outputs lists the messages a sends when it finishes, sends to the worker
// itself included: Output's, or both halves' for an Overlapped pair.
func (ix *Index) Outputs(worker int, a Action) []Message {
	var out []Message
	f, b, pair := a.Halves()
	if m, ok := ix.Output(worker, f); ok {
		out = append(out, m)
	}
	if pair {
		if m, ok := ix.Output(worker, b); ok {
			out = append(out, m)
		}
	}
	return out
}

// Machine interprets one worker's program. It is the single definition of
// what a Plan means at run time: the simulator drives it from its event
// queue and the runtime from one goroutine per worker. It does no I/O and
// keeps no time; it is not safe for concurrent use.
//
// Use: Deliver every message that arrives; call Start to take the next
// action once its input is present; run it; call Finish, which returns the
// messages to send. Messages a worker sends to itself are delivered
// internally and not returned.
type Machine struct {
	ix      *Index
	worker  int
	prog    []Action
	pc      int
	running bool
	inbox   map[Tag]struct{}
	// inflight counts (microbatch, stage) activations held: stored after a
	// forward, released by the backward that finishes with them.
	inflight int
	peak     int
}

// NewMachine returns the interpreter of worker's program.
func NewMachine(ix *Index, worker int) *Machine {
	return &Machine{ix: ix, worker: worker, prog: ix.plan.Programs[worker], inbox: make(map[Tag]struct{})}
}

// Worker is the worker this machine runs.
func (m *Machine) Worker() int { return m.worker }

// Deliver records an arrived message. It fails if the message is not meant
// for this worker or arrives twice.
func (m *Machine) Deliver(msg Message) error {
	if msg.To != m.worker {
		return fmt.Errorf("worker %d: message %s addressed to worker %d", m.worker, msg.Tag(), msg.To)
	}
	t := msg.Tag()
	if _, dup := m.inbox[t]; dup {
		return fmt.Errorf("worker %d: duplicate message %s from worker %d", m.worker, t, msg.From)
	}
	m.inbox[t] = struct{}{}
	return nil
}

// Peek returns the next action in program order and whether it may start
// now. ok is false when the program is done or an action is running.
func (m *Machine) Peek() (a Action, ready bool, ok bool) {
	if m.running || m.pc >= len(m.prog) {
		return Action{}, false, false
	}
	a = m.prog[m.pc]
	if _, missing := m.missing(a); missing {
		return a, false, true
	}
	return a, true, true
}

// missing returns the first input of a (of either half of an overlapped
// pair) that has not arrived.
func (m *Machine) missing(a Action) (Tag, bool) {
	f, b, pair := a.Halves()
	if t, need := m.ix.Input(m.worker, f); need {
		if _, have := m.inbox[t]; !have {
			return t, true
		}
	}
	if pair {
		if t, need := m.ix.Input(m.worker, b); need {
			if _, have := m.inbox[t]; !have {
				return t, true
			}
		}
	}
	return Tag{}, false
}

// Waiting returns what the next action waits for, if it waits on a message.
func (m *Machine) Waiting() (Action, Tag, bool) {
	a, ready, ok := m.Peek()
	if !ok || ready {
		return Action{}, Tag{}, false
	}
	t, _ := m.missing(a)
	return a, t, true
}

// Start takes the next action if its input has arrived.
func (m *Machine) Start() (Action, bool) {
	a, ready, ok := m.Peek()
	if !ok || !ready {
		return Action{}, false
	}
	f, b, pair := a.Halves()
	if t, need := m.ix.Input(m.worker, f); need {
		delete(m.inbox, t)
	}
	if pair {
		if t, need := m.ix.Input(m.worker, b); need {
			delete(m.inbox, t)
		}
	}
	m.running = true
	return a, true
}

// Finish completes the running action and returns the messages it sends
// to other workers.
func (m *Machine) Finish() []Message {
	if !m.running {
		return nil
	}
	a := m.prog[m.pc]
	m.running = false
	m.pc++
	f, b, pair := a.Halves()
	out := m.finishHalf(f, nil)
	if pair {
		out = m.finishHalf(b, out)
	}
	return out
}

// finishHalf accounts for one finished action (or half of a pair) and
// appends the message it sends to another worker to out.
func (m *Machine) finishHalf(a Action, out []Message) []Message {
	switch a.Kind {
	case Forward:
		m.inflight++
		if m.inflight > m.peak {
			m.peak = m.inflight
		}
	case Backward, BackwardWeight:
		m.inflight--
	case BackwardInput:
		// Without a matching W in the program the input gradient frees the
		// activations itself.
		if !m.ix.splitW[a.Microbatch*m.ix.ns+a.Stage] {
			m.inflight--
		}
	}
	msg, ok := m.ix.Output(m.worker, a)
	if !ok {
		return out
	}
	if msg.To == m.worker {
		m.inbox[msg.Tag()] = struct{}{}
		return out
	}
	return append(out, msg)
}

// Done reports whether the whole program has run.
func (m *Machine) Done() bool { return m.pc >= len(m.prog) && !m.running }

// PC is the index of the next action in the program.
func (m *Machine) PC() int { return m.pc }

// InFlight is the number of activations currently held.
func (m *Machine) InFlight() int { return m.inflight }

// PeakInFlight is the most activations held at once so far.
func (m *Machine) PeakInFlight() int { return m.peak }

// Pending is the number of delivered messages not yet consumed.
func (m *Machine) Pending() int { return len(m.inbox) }
