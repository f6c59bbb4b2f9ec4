// Package failures simulates a training run through a failure trace: K
// iterations back to back (or a time horizon), with nodes crashing,
// pausing, rejoining and losing bandwidth at given times. It recovers as
// the coordinator does, with the coordinator's own recovery policy
// (coordinator/policy: re-path or restore, whom to plan on, who rejoins)
// and the same planner (package planner), and it prices what the
// runtime pays: detection (a stream error at once, a paused node only when
// its lease expires), planning, checkpoint writes, the checkpoint load and
// the replayed steps of a restore, the retried iteration, and the hand-off
// of a rejoining node. Iteration times come from the simulator (package
// sim) on the cluster as it is at that moment.
package failures

import (
	"errors"
	"fmt"
	"math"
	"sort"
	"strings"

	"stagecoach/coordinator/policy"
	"stagecoach/planner"
	"stagecoach/scheduler"
	"stagecoach/sim"
)

// Costs are what recovery costs on the runtime, in seconds.
type Costs struct {
	// DetectS is how long a crash takes to notice: a peer's stream
	// fails at once (the runtime measures 13-19 ms).
	DetectS float64
	// LeaseTTLS is how long a paused node takes to notice: its lease
	// must expire. Shorter pauses only stall the iteration.
	LeaseTTLS float64
	// PlanS is the time to plan and install a new plan.
	PlanS float64
	// CheckpointS is the time to write one checkpoint; RestoreS the time
	// to load one (every restore, and with CheckpointS every hand-off).
	CheckpointS, RestoreS float64
	// ReplaceWaitS is how long a restore waits for replacements when
	// fewer healthy nodes than the job wants are left (the coordinator's
	// ReplaceWait, 3 lease TTLs by default) before it settles for them.
	ReplaceWaitS float64
}

// Job is what to simulate.
type Job struct {
	Name    string
	Planner Planner
	Cluster *sim.Cluster
	// Nodes are the cluster nodes the run starts with (and may get back).
	Nodes []string
	// Want is the workers the job is configured for (0: len(Nodes)).
	Want int
	// CheckpointEvery commits a checkpoint every this many steps (0:
	// never; a restore then starts from the seed).
	CheckpointEvery int
	Costs           Costs
	// Iterations stops after this many committed steps; HorizonS after
	// this much time (at least one must be set; the first reached ends).
	Iterations int
	HorizonS   float64
}

// Recovery is what one event cost.
type Recovery struct {
	AtS    float64 `json:"at_s"`
	Node   string  `json:"node"`
	Kind   string  `json:"kind"`
	Action string  `json:"action"` // repath, restore, rejoin, stall, none
	// RecoverS is from the event to the first new progress (after any
	// replay); Replayed is the steps re-run.
	RecoverS float64 `json:"recover_s"`
	Replayed int     `json:"replayed,omitempty"`
	Workers  int     `json:"workers"`
	Why      string  `json:"why,omitempty"`
}

// Point is one committed step: when, and the samples per second of the
// iteration that committed it.
type Point struct {
	T           float64 `json:"t_s"`
	Samples     float64 `json:"samples"`
	SamplesPerS float64 `json:"samples_per_s"`
}

// Outcome sums a run up.
type Outcome struct {
	Name            string  `json:"schedule"`
	CheckpointEvery int     `json:"checkpoint_every"`
	ElapsedS        float64 `json:"elapsed_s"`
	Committed       int     `json:"committed_steps"`
	Samples         float64 `json:"samples"`
	// GoodputPerHour is committed samples per hour of the run.
	GoodputPerHour float64 `json:"goodput_samples_per_hour"`
	// Lost counts iterations abandoned mid-way; Replayed the committed
	// steps re-run after restores.
	Lost     int `json:"iterations_lost"`
	Replayed int `json:"steps_replayed"`
	// FailureFreeS is the iteration time of the starting plan.
	FailureFreeS float64    `json:"failure_free_iteration_s"`
	Recoveries   []Recovery `json:"recoveries"`
	Timeline     []Point    `json:"-"`
	// Stopped says why the run ended early (no plan fits the nodes
	// left), empty when it reached its end.
	Stopped string `json:"stopped,omitempty"`
}

// MeanRecoverS is the mean RecoverS over failures (not rejoins).
func (o *Outcome) MeanRecoverS() float64 {
	var s float64
	n := 0
	for _, r := range o.Recoveries {
		if r.Action == "repath" || r.Action == "restore" {
			s += r.RecoverS
			n++
		}
	}
	if n == 0 {
		return 0
	}
	return s / float64(n)
}

// maxSteps bounds a run's loop (a horizon with tiny iterations).
const maxSteps = 10_000_000

// Run simulates job through trace.
func Run(job Job, trace *Trace) (*Outcome, error) {
	if job.Iterations <= 0 && !(job.HorizonS > 0) {
		return nil, errors.New("failures: set iterations or a horizon")
	}
	if job.Want == 0 {
		job.Want = len(job.Nodes)
	}
	r := &runner{job: job, cluster: *job.Cluster, live: map[string]bool{}, iterCache: map[string]float64{}}
	r.cluster.Nodes = append([]sim.Node(nil), job.Cluster.Nodes...)
	for _, n := range job.Nodes {
		r.live[n] = true
	}
	r.out = &Outcome{Name: job.Name, CheckpointEvery: job.CheckpointEvery}
	var err error
	if r.fam, err = job.Planner.family(); err != nil {
		return nil, err
	}
	if err := r.start(); err != nil {
		return nil, err
	}
	r.out.FailureFreeS = r.iterS
	var events []Event
	if trace != nil {
		events = append(events, trace.Events...)
	}
	i := 0
	for steps := 0; steps < maxSteps; steps++ {
		if job.Iterations > 0 && r.out.Committed >= job.Iterations {
			break
		}
		if job.HorizonS > 0 && r.t >= job.HorizonS {
			break
		}
		if r.down {
			if !r.whileDown(events, &i) {
				if job.HorizonS > 0 {
					// Down until the end of the run.
					r.t = max(r.t, job.HorizonS)
					rec := r.downRec
					rec.RecoverS = r.t - r.downSince
					r.out.Recoveries = append(r.out.Recoveries, rec)
					break
				}
				r.out.Stopped = fmt.Sprintf("at %.0f s: %s, and no node comes back", r.downSince, r.downRec.Why)
				break
			}
			continue
		}
		end := r.t + r.iterS
		if i < len(events) && events[i].At.Seconds() < end {
			e := events[i]
			i++
			more, err := r.event(e, &events, i)
			if err != nil {
				return nil, err
			}
			if !more {
				break
			}
			continue
		}
		r.commit(end)
		r.maybeRejoin()
	}
	o := r.out
	o.ElapsedS = r.t
	if r.t > 0 {
		o.GoodputPerHour = o.Samples / r.t * 3600
	}
	return o, nil
}

type runner struct {
	job     Job
	fam     planner.Family
	cluster sim.Cluster
	live    map[string]bool
	plan    *scheduler.Plan
	iterS   float64
	samples float64
	t       float64
	// lastCkpt is the newest checkpointed step.
	lastCkpt  int
	out       *Outcome
	iterCache map[string]float64
	// sizes are the starting plan's nodes per stage (SkipPipe's
	// configured stage sizes).
	sizes []int
	// down is set while no plan fits the healthy nodes (since downSince;
	// downRec is the failure that left it so).
	down      bool
	downSince float64
	downRec   Recovery
}

// commit ends the running iteration at end.
// A checkpoint step is committed once its checkpoint is written (the
// runtime lists it in the transaction that commits the step).
func (r *runner) commit(end float64) {
	r.t = end
	r.out.Committed++
	r.out.Samples += r.samples
	if k := r.job.CheckpointEvery; k > 0 && r.out.Committed%k == 0 {
		r.t += r.job.Costs.CheckpointS
		r.lastCkpt = r.out.Committed
	}
	r.out.Timeline = append(r.out.Timeline, Point{T: r.t, Samples: r.samples, SamplesPerS: r.samples / r.iterS})
}

// event applies e (which happens before the running iteration ends); it
// returns false when the run cannot go on.
func (r *runner) event(e Event, events *[]Event, next int) (bool, error) {
	at := e.At.Seconds()
	inPlan := r.inPlan(e.Node)
	rec := Recovery{AtS: at, Node: e.Node, Kind: e.Kind, Action: "none"}
	switch e.Kind {
	case Rejoin:
		r.live[e.Node] = true // joins at the next iteration boundary
		return true, nil
	case Degrade:
		r.degrade(e.Node, e.BandwidthGiBs)
		if err := r.reprice(); err != nil {
			return false, err
		}
		return true, nil
	case Pause:
		if !inPlan {
			return true, nil
		}
		if ttl := r.job.Costs.LeaseTTLS; e.For.Seconds() < ttl || ttl <= 0 {
			// Only stalls the iteration.
			r.t += e.For.Seconds()
			rec.Action, rec.RecoverS = "stall", e.For.Seconds()
			rec.Workers = len(r.plan.Workers)
			r.out.Recoveries = append(r.out.Recoveries, rec)
			return true, nil
		}
		// Noticed when the lease expires; the node comes back by
		// itself after the pause.
		back := Event{At: Duration(int64(e.At) + int64(e.For)), Node: e.Node, Kind: Rejoin}
		insert(events, next, back)
		return r.fail(e, at+r.job.Costs.LeaseTTLS, rec)
	case Crash:
		if !inPlan {
			r.live[e.Node] = false
			return true, nil
		}
		return r.fail(e, at+r.job.Costs.DetectS, rec)
	}
	return true, nil
}

// insert puts e into events (sorted by time) at or after index from.
func insert(events *[]Event, from int, e Event) {
	ev := *events
	k := from + sort.Search(len(ev)-from, func(i int) bool { return ev[from+i].At > e.At })
	ev = append(ev, Event{})
	copy(ev[k+1:], ev[k:])
	ev[k] = e
	*events = ev
}

// fail abandons the running iteration for the loss of e.Node, noticed at
// detected, and recovers as the coordinator would.
func (r *runner) fail(e Event, detected float64, rec Recovery) (bool, error) {
	r.live[e.Node] = false
	r.out.Lost++
	r.t = detected
	s := policy.State{Family: recovery(r.fam), Step: int64(r.out.Committed + 1), Placement: placement(r.plan), Probed: true}
	for _, w := range s.Workers {
		if r.live[w] {
			s.Live = append(s.Live, policy.Member{Name: w, Applied: int64(r.out.Committed)})
		}
	}
	d := policy.Decide(s, policy.Event{Kind: policy.WorkerLost, Workers: []string{e.Node}})
	rec.Why = d.Why
	start := e.At.Seconds()
	if d.Kind == policy.Repath || d.Kind == policy.Vacate {
		p, err := r.job.Planner.plan(nil, d.Parts, r.plan)
		if err == nil {
			if err = r.install(p); err == nil {
				r.t += r.job.Costs.PlanS
				rec.Action, rec.RecoverS, rec.Workers = "repath", r.t-start, len(r.plan.Workers)
				r.out.Recoveries = append(r.out.Recoveries, rec)
				return true, nil
			}
		}
		rec.Why = fmt.Sprintf("re-path failed: %v", err)
	}
	// Restore: plan on the healthy nodes the policy settles for, after
	// waiting for replacements when too few are left; when no plan fits
	// them, the job waits for a node to come back.
	if len(r.liveNodes()) < r.job.Want {
		r.t += r.job.Costs.ReplaceWaitS
	}
	if err := r.restore(); err != nil {
		rec.Action, rec.Why = "wait", err.Error()
		rec.Workers = 0
		r.down, r.downSince, r.downRec = true, start, rec
		return true, nil
	}
	r.resumed(rec, start)
	return true, nil
}

// resumed charges a restore that has planned (planning, the checkpoint
// load, the committed steps since the checkpoint replayed) and records
// it, timed from since.
func (r *runner) resumed(rec Recovery, since float64) {
	replay := r.out.Committed - r.lastCkpt
	r.t += r.job.Costs.PlanS + r.job.Costs.RestoreS + float64(replay)*r.iterS
	r.out.Replayed += replay
	rec.Action, rec.RecoverS, rec.Replayed, rec.Workers = "restore", r.t-since, replay, len(r.plan.Workers)
	r.out.Recoveries = append(r.out.Recoveries, rec)
}

// degrade slows node's network interface to gibs and forgets the
// iteration times priced before.
func (r *runner) degrade(node string, gibs float64) {
	for i := range r.cluster.Nodes {
		if r.cluster.Nodes[i].Name == node {
			r.cluster.Nodes[i].EgressGiBs = gibs
		}
	}
	r.iterCache = map[string]float64{}
}

// restore plans on the healthy nodes the policy settles for (as the
// coordinator's restore does after its wait for replacements).
func (r *runner) restore() error {
	live := r.liveNodes()
	n, ok := policy.Settle(recovery(r.fam), len(live), r.job.Want, r.job.Planner.stages())
	if !ok {
		return fmt.Errorf("%d healthy nodes cannot hold %d stages", len(live), r.job.Planner.stages())
	}
	p, err := r.planOn(policy.Prefer(live, r.planNodes(), n))
	if err != nil {
		return err
	}
	return r.install(p)
}

// whileDown applies the next event while no plan fits the healthy nodes
// and tries the restore again; it returns false when no event is left.
func (r *runner) whileDown(events []Event, i *int) bool {
	if *i >= len(events) {
		return false
	}
	e := events[*i]
	*i++
	r.t = max(r.t, e.At.Seconds())
	switch e.Kind {
	case Rejoin:
		r.live[e.Node] = true
	case Crash:
		r.live[e.Node] = false
	case Degrade:
		r.degrade(e.Node, e.BandwidthGiBs)
	}
	if r.restore() != nil {
		return true
	}
	r.down = false
	rec := r.downRec
	rec.Why = "waited for " + e.Node + ": " + rec.Why
	r.resumed(rec, r.downSince)
	return true
}

// maybeRejoin, at an iteration boundary, takes healthy nodes outside a
// short plan back in through a hand-off (checkpoint written and loaded).
func (r *runner) maybeRejoin() {
	current := r.planNodeList()
	var ready []string
	inPlan := r.planNodes()
	for _, n := range r.liveNodes() {
		if !inPlan[n] {
			ready = append(ready, n)
		}
	}
	chosen := policy.Rejoin(recovery(r.fam), current, ready, r.job.Want, r.job.Planner.stages())
	if chosen == nil {
		return
	}
	start := r.t
	p, err := r.planOn(chosen)
	if err != nil {
		return // stay on the current plan
	}
	if err := r.install(p); err != nil {
		return
	}
	r.t += r.job.Costs.CheckpointS + r.job.Costs.PlanS + r.job.Costs.RestoreS
	var joined []string
	for _, n := range chosen {
		if !inPlan[n] {
			joined = append(joined, n)
		}
	}
	r.out.Recoveries = append(r.out.Recoveries, Recovery{AtS: start, Node: strings.Join(joined, ","), Kind: Rejoin, Action: "rejoin",
		RecoverS: r.t - start, Workers: len(r.plan.Workers)})
}

// start plans on the job's nodes and records the stages' sizes.
func (r *runner) start() error {
	p, err := r.job.Planner.plan(r.job.Nodes, nil, nil)
	if err != nil {
		return err
	}
	for _, ws := range p.StageWorkers() {
		r.sizes = append(r.sizes, len(ws))
	}
	return r.install(p)
}

// planOn plans a restore or a rejoin on nodes: families that keep their
// placement get the nodes per stage (policy.Partition), the others place
// them by name.
func (r *runner) planOn(nodes []string) (*scheduler.Plan, error) {
	if r.fam.KeepsPlacement {
		return r.job.Planner.plan(nil, policy.Partition(placement(r.plan), nodes, r.sizes), r.plan)
	}
	return r.job.Planner.plan(nodes, nil, r.plan)
}

// install makes p the running plan and prices its iteration.
func (r *runner) install(p *scheduler.Plan) error {
	if err := scheduler.Validate(p); err != nil {
		return err
	}
	r.plan = p
	r.samples = 0
	for _, mb := range p.Microbatches {
		r.samples += float64(mb.Samples)
	}
	return r.reprice()
}

func (r *runner) reprice() error {
	key := strings.Join(r.planNodeList(), ",") + "|" + fmt.Sprint(len(r.plan.Stages), r.plan.VacantStages())
	if v, ok := r.iterCache[key]; ok {
		r.iterS = v
		return nil
	}
	if _, err := sim.ChooseAllReduce(r.plan, &r.cluster); err != nil {
		return err
	}
	res, err := sim.Run(r.plan, &r.cluster, sim.Options{})
	if err != nil {
		return err
	}
	if !(res.IterationTimeS > 0) || math.IsInf(res.IterationTimeS, 0) {
		return fmt.Errorf("failures: iteration time %v", res.IterationTimeS)
	}
	r.iterS = res.IterationTimeS
	r.iterCache[key] = r.iterS
	return nil
}

func (r *runner) inPlan(node string) bool { return r.planNodes()[node] }

func (r *runner) planNodes() map[string]bool {
	m := map[string]bool{}
	for _, w := range r.plan.Workers {
		m[w.Node] = true
	}
	return m
}

func (r *runner) planNodeList() []string {
	out := make([]string, len(r.plan.Workers))
	for i, w := range r.plan.Workers {
		out[i] = w.Node
	}
	return out
}

// liveNodes lists the healthy nodes, in the job's order.
func (r *runner) liveNodes() []string {
	var out []string
	for _, n := range r.job.Nodes {
		if r.live[n] {
			out = append(out, n)
		}
	}
	return out
}

func placement(p *scheduler.Plan) policy.Placement {
	pl := policy.Placement{StageWorkers: p.StageWorkers()}
	for _, w := range p.Workers {
		pl.Workers = append(pl.Workers, w.Node)
	}
	return pl
}
