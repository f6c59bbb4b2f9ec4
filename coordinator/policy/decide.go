package policy

import (
	"fmt"
	"strings"
	"time"
)

// Member is a registered worker that answered its Status probe.
type Member struct {
	Name string
	// Applied is the step it last applied.
	Applied int64
}

// State is what the coordinator knows when an event arrives. Decide
// never changes it: the coordinator keeps it and carries out the action.
type State struct {
	Family Family
	// Placement is the plan in force.
	Placement
	// Want and Stages are the job's configured workers and stages.
	Want, Stages int
	// Step is the step in progress (at a boundary: the next to run);
	// Steps the job's last.
	Step, Steps int64
	// Stepping is true once the step's Step fan-out started (some
	// workers may have applied it).
	Stepping bool
	// AtBoundary is true between iterations (no RPC of a step in
	// flight): the only time the plan may change without a failure.
	AtBoundary bool
	// Committed is the last committed step; Checkpoints the committed
	// checkpoints' steps the coordinator knows (0: the seeded state).
	Committed   int64
	Checkpoints []int64
	// Failures counts the failed iterations since the last commit, the
	// one being decided included; past MaxFailures (0: no limit) the job
	// gives up.
	Failures, MaxFailures int
	// Probed is true when Live is fresh: every candidate of the event
	// was asked for its Status since the event. Live lists, in
	// registration order, the registered workers that answered.
	Probed bool
	Live   []Member
	// Suspects are workers that did not answer a probe under their
	// current lease: they are used again only once they register anew.
	Suspects map[string]bool
	// Repathing is true while a re-path decided earlier is installed:
	// a failure then restores.
	Repathing bool
	// Restoring is true while a restore waits for replacements, until
	// ReplaceBy, re-checking every Poll.
	Restoring bool
	ReplaceBy time.Time
	Poll      time.Duration
	// ReplanDrift is the cost-model drift that replans (0: never).
	ReplanDrift float64
	// Recampaign lets a deposed leader campaign again when nobody else
	// leads.
	Recampaign bool
	// Now is the time of the event (the coordinator's injected clock).
	Now time.Time
}

// EventKind tells events apart.
type EventKind int

const (
	// WorkerLost: a plan worker's registration vanished or was replaced,
	// or its peer stream broke (Workers: the ones known).
	WorkerLost EventKind = iota
	// WorkerRegistered: workers outside the plan are registered and not
	// suspected (Workers, in registration order).
	WorkerRegistered
	// WorkerSuspected: Workers did not answer a probe.
	WorkerSuspected
	// RPCFailure: an RPC of the step failed or passed its deadline;
	// Fatal when a retry would only repeat it (arithmetic, a replay
	// that does not match its commit, the job being stopped).
	RPCFailure
	// LeaseLapse: a plan worker's lease lapsed while it was registered
	// (a paused or cut-off worker: nothing broke, it stopped answering).
	LeaseLapse
	// Drift: the calibrated cost model moved by Drift (a fraction) from
	// the one the plan was made with.
	Drift
	// LeaderChange: the coordinator's leadership ended; NobodyLeads
	// when etcd answered that the election has no leader.
	LeaderChange
	// Tick: time passed (the coordinator was told to wait).
	Tick
)

var eventNames = []string{"worker-lost", "worker-registered", "worker-suspected", "rpc-failure", "lease-lapse", "drift", "leader-change", "tick"}

func (k EventKind) String() string { return nameOf(eventNames, int(k), "event") }

// nameOf is names[i], or what (i) for a value without a name.
func nameOf(names []string, i int, what string) string {
	if i >= 0 && i < len(names) {
		return names[i]
	}
	return fmt.Sprintf("%s(%d)", what, i)
}

// Event is something the coordinator observed.
type Event struct {
	Kind        EventKind
	Workers     []string
	Fatal       bool
	Drift       float64
	NobodyLeads bool
}

// ActionKind tells actions apart.
type ActionKind int

const (
	// None: carry on (Why may say why nothing changes).
	None ActionKind = iota
	// Probe: ask Workers (nil: every registered worker) for their
	// Status, then decide the same event again with Probed and Live.
	Probe
	// Repath: retry the step on the survivors, Parts per stage, with the
	// same placement minus Lost; nothing is restored.
	Repath
	// Vacate: a re-path that leaves Vacant stages without a worker
	// (every path skips them until a worker joins).
	Vacate
	// Restore: plan on Workers (nil: wait for replacements first, then
	// decide Ticks), reset every shard, load the checkpoint of step From
	// and replay the Replay committed steps after it.
	Restore
	// Join: at this boundary, hand the state over to a plan on Workers
	// (Joined are the newcomers).
	Join
	// Wait: do nothing until Until, then decide a Tick.
	Wait
	// Replan: plan again with the calibrated cost model (drift).
	Replan
	// StepDown: stop leading (another leader, or no way to know).
	StepDown
	// Campaign: campaign again for the job.
	Campaign
	// GiveUp: end the run with an error (Why).
	GiveUp
)

var actionNames = []string{"none", "probe", "repath", "vacate", "restore", "join", "wait", "replan", "step-down", "campaign", "give-up"}

func (k ActionKind) String() string { return nameOf(actionNames, int(k), "action") }

// Action is what Decide tells the coordinator to do.
type Action struct {
	Kind ActionKind
	// Why says why (a refused re-path, a give-up, a wait).
	Why string
	// Workers: whom to probe, or the workers a restore or rejoin plans
	// on (sorted as the plan wants them).
	Workers []string
	// Parts are the survivors per stage (Repath, Vacate); Vacant the
	// stages left without one (Vacate).
	Parts  [][]string
	Vacant []int
	// Lost names the plan workers that are gone, in plan order; Joined
	// the newcomers of a rejoin.
	Lost, Joined []string
	// From is the checkpoint a restore loads (0: the seeded state) and
	// Replay the committed steps after it re-run without a commit.
	From, Replay int64
	// Until is the end of a Wait.
	Until time.Time
}

// Decide is the recovery policy: what the coordinator does about e, given
// s. It is pure: same state and event, same action.
func Decide(s State, e Event) Action {
	switch e.Kind {
	case WorkerLost, LeaseLapse, RPCFailure:
		return failed(s, e)
	case WorkerRegistered:
		return registered(s, e)
	case WorkerSuspected:
		return Action{Kind: None, Why: fmt.Sprintf("%s not used until registered again", strings.Join(e.Workers, ", "))}
	case Drift:
		return drifted(s, e)
	case LeaderChange:
		if s.Recampaign && e.NobodyLeads {
			return Action{Kind: Campaign, Why: "deposed with nobody else leading"}
		}
		return Action{Kind: StepDown, Why: "leadership lost"}
	case Tick:
		if s.Restoring {
			return gather(s)
		}
		return Action{Kind: None}
	}
	return Action{Kind: GiveUp, Why: fmt.Sprintf("unknown event %v", e.Kind)}
}

// failed decides a failed iteration: give up after too many in a row,
// else probe, then re-path (SkipPipe, when the survivors allow it) or
// restore.
func failed(s State, e Event) Action {
	if e.Fatal {
		return Action{Kind: GiveUp, Why: fmt.Sprintf("step %d failed and a retry would repeat it", s.Step)}
	}
	if s.MaxFailures > 0 && s.Failures > s.MaxFailures {
		return Action{Kind: GiveUp, Why: fmt.Sprintf("step %d failed %d times in a row, giving up", s.Step, s.Failures-1)}
	}
	if !s.Probed {
		return Action{Kind: Probe}
	}
	if err := s.checkPlacement(); err != "" {
		return Action{Kind: GiveUp, Why: err}
	}
	if s.Repathing {
		return restore(s, "the re-path failed", lost(s))
	}
	return repathOrRestore(s)
}

// checkPlacement says what is wrong with a placement whose stages name
// workers it does not have ("" when nothing is).
func (s State) checkPlacement() string {
	for st, ws := range s.StageWorkers {
		for _, w := range ws {
			if w < 0 || w >= len(s.Workers) {
				return fmt.Sprintf("the plan's stage %d names worker %d of %d", st, w, len(s.Workers))
			}
		}
	}
	return ""
}

// lost names the plan workers not answering, in plan order.
func lost(s State) []string {
	live := s.liveSet()
	var out []string
	for _, w := range s.Workers {
		if _, ok := live[w]; !ok {
			out = append(out, w)
		}
	}
	return out
}

func (s State) liveSet() map[string]int64 {
	out := make(map[string]int64, len(s.Live))
	for _, m := range s.Live {
		if !s.Suspects[m.Name] {
			out[m.Name] = m.Applied
		}
	}
	return out
}

// restore is a Restore from the newest known checkpoint at or below the
// committed step; its workers are chosen once the wait for replacements
// is over (gather).
func restore(s State, why string, lost []string) Action {
	var from int64
	for _, c := range s.Checkpoints {
		if c <= s.Committed && c > from {
			from = c
		}
	}
	return Action{Kind: Restore, Why: why, Lost: lost, From: from, Replay: s.Committed - from}
}

// repathOrRestore chooses between re-path and restore. SkipPipe re-paths
// when no Step was sent, every survivor holds the previous step, no
// stage-0 worker (an origin: the microbatches it starts would be lost) is
// gone, and some stage besides stage 0 keeps a worker; a stage left
// without one becomes vacant, which SkipPipeFull (never skipping) cannot
// have.
func repathOrRestore(s State) Action {
	live := s.liveSet()
	gone := lost(s)
	if s.Family == Classic {
		return restore(s, "", gone)
	}
	if s.Stepping {
		return restore(s, "the failure hit the Step fan-out (some workers may have stepped)", gone)
	}
	for _, w := range s.Workers {
		if a, ok := live[w]; ok && a != s.Step-1 {
			return restore(s, fmt.Sprintf("worker %s holds step %d, not %d", w, a, s.Step-1), gone)
		}
	}
	parts := make([][]string, len(s.StageWorkers))
	var vacant []int
	for st, ws := range s.StageWorkers {
		for _, w := range ws {
			name := s.Workers[w]
			if _, ok := live[name]; ok {
				parts[st] = append(parts[st], name)
			} else if st == 0 {
				return restore(s, fmt.Sprintf("stage-0 worker %s is lost", name), gone)
			}
		}
		if len(parts[st]) == 0 {
			vacant = append(vacant, st)
		}
	}
	if len(vacant) >= len(s.StageWorkers)-1 {
		return restore(s, "no stage but stage 0 has a worker left", gone)
	}
	if len(vacant) > 0 && s.Family == SkipPipeFull {
		return restore(s, "a stage has no replica left and skippipe-full visits every stage", gone)
	}
	if len(vacant) > 0 {
		return Action{Kind: Vacate, Parts: parts, Vacant: vacant, Lost: gone}
	}
	return Action{Kind: Repath, Parts: parts, Lost: gone}
}

// gather decides a restore's workers: Want when that many answer (plan
// workers first); else wait for replacements until ReplaceBy; then settle
// for fewer that still hold every stage, or give up.
func gather(s State) Action {
	var live []string
	for _, m := range s.Live {
		if !s.Suspects[m.Name] {
			live = append(live, m.Name)
		}
	}
	inPlan := map[string]bool{}
	for _, w := range s.Workers {
		inPlan[w] = true
	}
	if len(live) >= s.Want {
		a := restore(s, "", nil)
		a.Workers = Prefer(live, inPlan, s.Want)
		return a
	}
	if s.Now.After(s.ReplaceBy) {
		if n, ok := Settle(s.Family, len(live), s.Want, s.Stages); ok {
			a := restore(s, fmt.Sprintf("no replacement: continuing on %d of %d workers", n, s.Want), nil)
			a.Workers = Prefer(live, inPlan, n)
			return a
		}
		return Action{Kind: GiveUp, Why: fmt.Sprintf("%d healthy workers after waiting for replacements, need %d (at least %d)", len(live), s.Want, s.Stages)}
	}
	return Action{Kind: Wait, Until: s.Now.Add(s.Poll), Why: fmt.Sprintf("%d of %d workers answer", len(live), s.Want)}
}

// registered decides about workers that registered outside the plan: at
// an iteration boundary, when the plan is short of Want, the ones that
// answer join (policy.Rejoin says how many).
func registered(s State, e Event) Action {
	if !s.AtBoundary {
		return Action{Kind: None, Why: "a rejoin waits for an iteration boundary"}
	}
	if len(s.Workers) >= s.Want {
		return Action{Kind: None, Why: "the plan has every worker"}
	}
	var cands []string
	for _, w := range e.Workers {
		if !s.Suspects[w] {
			cands = append(cands, w)
		}
	}
	if len(cands) == 0 {
		return Action{Kind: None}
	}
	if !s.Probed {
		return Action{Kind: Probe, Workers: cands}
	}
	live := s.liveSet()
	var ready []string
	for _, w := range cands {
		if _, ok := live[w]; ok {
			ready = append(ready, w)
		}
	}
	chosen := Rejoin(s.Family, s.Workers, ready, s.Want, s.Stages)
	if chosen == nil {
		return Action{Kind: None, Why: "not enough newcomers for a better plan"}
	}
	inPlan := map[string]bool{}
	for _, w := range s.Workers {
		inPlan[w] = true
	}
	a := Action{Kind: Join, Workers: chosen}
	for _, w := range chosen {
		if !inPlan[w] {
			a.Joined = append(a.Joined, w)
		}
	}
	return a
}

// drifted replans when the cost model drifted past the threshold, unless
// the job is at its last step.
func drifted(s State, e Event) Action {
	if s.ReplanDrift <= 0 || s.Step >= s.Steps {
		return Action{Kind: None}
	}
	if e.Drift <= s.ReplanDrift {
		return Action{Kind: None, Why: fmt.Sprintf("drift %.0f%% within %.0f%%", 100*e.Drift, 100*s.ReplanDrift)}
	}
	return Action{Kind: Replan, Why: fmt.Sprintf("cost model drifted %.0f%% (threshold %.0f%%)", 100*e.Drift, 100*s.ReplanDrift)}
}
