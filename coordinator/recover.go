package coordinator

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync"
	"time"

	"stagecoach/coordinator/policy"
	"stagecoach/internal/etcdx"
	"stagecoach/model"
	pb "stagecoach/proto"
	"stagecoach/scheduler"
)

// Failure handling: the mechanism. What to do is policy.Decide's (see
// coordinator/policy and its scenario files); this file turns what
// happens into the policy's events and carries its actions out.
//
// A plan worker is lost when its lease lapses (the membership watch
// cancels the epoch's context: a LeaseLapse event when the registration
// vanished, WorkerLost when another replaced it), when one of its RPCs or
// peer streams fails, or when an RPC passes its deadline (RPCFailure),
// whichever comes first. The in-flight iteration is then abandoned, the
// members are probed (the Probe action) and the policy chooses, under a
// new epoch (the workers drop every tensor and command of older epochs):
//
//   - Repath / Vacate (SkipPipe only): the iteration failed before any
//     Step was sent, so every survivor still holds exactly the committed
//     step's parameters. The plan is rebuilt on the survivors with the
//     same placement minus the lost workers (the stage keeps its other
//     replicas, or is left vacant) and the same iteration is retried with
//     the same windows. Nothing is restored.
//
//   - Restore (every schedule, and SkipPipe when re-pathing is impossible
//     or failed): the policy waits for replacements (Wait, then Tick) and
//     names the workers; the plan is rebuilt on them, every shard is reset
//     and loaded from the last committed checkpoint, the sampler is
//     rewound to its data position, and the steps committed after that
//     checkpoint are replayed without being committed again (their losses
//     must match the committed ones bit for bit when the plan is the one
//     they were committed under).
//
// No partial step survives either way. Step is sent only after every
// RunIteration succeeded; if a worker fails during the Step fan-out, some
// workers may have applied the step and others not, and the step was not
// committed. The policy then refuses to re-path and the restore reloads
// every shard from the checkpoint, so the stepped workers are rolled back
// too.
//
// A worker that appears (a replacement, or a lost one that registered
// again) while the plan is short of Config.Workers is offered to the
// policy at the next iteration boundary (WorkerRegistered); when it says
// Join, every plan worker saves its shards at the current step into a
// hand-off directory, the new plan is installed and every worker loads
// from there (SkipPipe replicas are bit-identical, so any replica's file
// is the stage's state).

// Recovery describes one failure and what the coordinator did about it.
type Recovery struct {
	// Step is the step that failed (or, for a rejoin, the next step).
	Step int64 `json:"step"`
	// Kind is "repath", "restore" or "rejoin" (or, in etcd's record
	// only, KindTakeover).
	Kind string `json:"kind"`
	// Cause is the error that ended the iteration.
	Cause string `json:"cause"`
	// Lost and Joined name the workers that left and entered the plan.
	Lost   []string `json:"lost,omitempty"`
	Joined []string `json:"joined,omitempty"`
	// Epoch is the new plan epoch; Workers its worker count.
	Epoch   int64 `json:"epoch"`
	Workers int   `json:"workers"`
	// FromCheckpoint is the checkpoint step restored (restore only; 0 is
	// the seeded initial state) and Replayed the committed steps re-run.
	FromCheckpoint int64 `json:"from_checkpoint,omitempty"`
	Replayed       int64 `json:"replayed,omitempty"`
	// Vacant lists the stages a re-path left without a worker (every
	// path skips them until a worker joins).
	Vacant []int `json:"vacant,omitempty"`
	// DetectedAt is when the coordinator noticed the failure; ResumedAt
	// when the new plan was installed and the retry could start;
	// CommittedAt when the first new step after it was committed.
	DetectedAt  time.Time `json:"detected_at"`
	ResumedAt   time.Time `json:"resumed_at"`
	CommittedAt time.Time `json:"committed_at,omitzero"`
	// RecoveryS is ResumedAt - DetectedAt; ToCommitS CommittedAt -
	// DetectedAt.
	RecoveryS float64 `json:"recovery_s"`
	ToCommitS float64 `json:"to_commit_s,omitempty"`
}

// armWatch starts the membership watch of the current plan: it cancels
// the returned context when a plan worker's registration disappears or
// changes lease, and keeps the latest membership for rejoin checks.
func (r *run) armWatch(parent context.Context) context.Context {
	if r.stopWatch != nil {
		r.stopWatch(nil)
	}
	ctx, cancel := context.WithCancelCause(parent)
	r.stopWatch = cancel
	plan := make([]etcdx.Member, len(r.workers))
	for i, w := range r.workers {
		plan[i] = w.member
	}
	go func() {
		for ms := range etcdx.WatchMembers(ctx, r.leader.Client(), r.leader.Keys()) {
			r.latest.Store(&ms)
			cur := map[string]etcdx.Member{}
			for _, m := range ms {
				cur[m.Name] = m
			}
			for i, m := range plan {
				if c, ok := cur[m.Name]; !ok || c.Lease != m.Lease || c.Addr != m.Addr {
					var err error = fmt.Errorf("%w: plan worker %d (%s at %s) left the job (lease %x lapsed or replaced)", ErrWorkerLost, i, m.Name, m.Addr, m.Lease)
					if !ok {
						err = lapsed{err, m.Name}
					}
					cancel(err)
					return
				}
			}
		}
	}()
	return ctx
}

// probe asks every candidate for its Status under a short deadline and
// returns those that answered, keyed by name. A worker that does not
// answer (killed, stopped, partitioned) is remembered as suspect under its
// lease: it is not used again until it registers under a new lease.
func (r *run) probe(ctx context.Context, cands []etcdx.Member) map[string]*pb.StatusResponse {
	out := map[string]*pb.StatusResponse{}
	failed := map[string]int64{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, m := range cands {
		if r.suspect[m.Name] == m.Lease {
			continue
		}
		// Connections are looked up here, not in the goroutines: the
		// pool is the run loop's alone. (Dialling does not block.)
		w, err := r.conn(ctx, m)
		wg.Add(1)
		go func() {
			defer wg.Done()
			var st *pb.StatusResponse
			if err == nil {
				pctx, cancel := context.WithTimeout(ctx, r.cfg.ProbeTimeout)
				st, err = w.cli.Status(pctx, &pb.StatusRequest{})
				cancel()
			}
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				failed[m.Name] = m.Lease
				r.cfg.Logf("worker %s at %s does not answer (%v); not used until it registers again", m.Name, m.Addr, err)
				return
			}
			out[m.Name] = st
		}()
	}
	wg.Wait()
	// The suspects are the run loop's: recorded once every probe is back.
	for name, lease := range failed {
		r.suspect[name] = lease
	}
	return out
}

// conn returns the control connection to m, reusing an open one to the
// same address.
func (r *run) conn(ctx context.Context, m etcdx.Member) (*workerConn, error) {
	if w, ok := r.conns[m.Name]; ok && w.member.Addr == m.Addr {
		w.member = m
		return w, nil
	} else if ok {
		w.close()
		delete(r.conns, m.Name)
	}
	cli, closeFn, err := r.cfg.Dial(ctx, m.Addr)
	if err != nil {
		return nil, err
	}
	w := &workerConn{member: m, cli: cli, close: closeFn}
	r.conns[m.Name] = w
	return w, nil
}

// healthy reads the registrations and returns those answering Status.
func (r *run) healthy(ctx context.Context) ([]etcdx.Member, map[string]*pb.StatusResponse, error) {
	ms, _, err := etcdx.Members(ctx, r.leader.Client(), r.leader.Keys())
	if err != nil {
		return nil, nil, err
	}
	st := r.probe(ctx, ms)
	var out []etcdx.Member
	for _, m := range ms {
		if _, ok := st[m.Name]; ok {
			out = append(out, m)
		}
	}
	return out, st, nil
}

// recover handles the failure of step: it returns the step to run next.
// The policy decides (give up, re-path, vacate or restore); this carries
// it out.
func (r *run) recover(ctx context.Context, step int64, cause error) (int64, error) {
	cfg := r.cfg
	det := cfg.clock().Now()
	if r.stopWatch != nil {
		r.stopWatch(nil)
	}
	r.failures++
	ev := failureEvent(ctx, cause)
	act := policy.Decide(r.state(step), ev)
	if act.Kind == policy.GiveUp || act.Kind == policy.StepDown {
		return 0, fmt.Errorf("coordinator: %s: %w", act.Why, cause)
	}
	cfg.Logf("step %d failed: %v; recovering", step, cause)
	// A commit whose answer was lost may have landed: know which before
	// choosing what to replay.
	if err := r.committer.Refresh(ctx); err != nil {
		return 0, fmt.Errorf("%w (recovering from: %w)", err, cause)
	}
	rec := Recovery{Step: step, Cause: cause.Error(), DetectedAt: det}
	live, st, err := r.healthy(ctx)
	if err != nil {
		return 0, err
	}
	s := r.probed(step, live, st)
	act = policy.Decide(s, ev)
	rec.Lost = act.Lost
	next := step
	switch act.Kind {
	case policy.Repath, policy.Vacate:
		err = r.repath(ctx, act.Parts, live)
		if err == nil {
			rec.Kind, rec.Vacant = "repath", r.plan.VacantStages()
			break
		}
		cfg.Logf("re-path after step %d failed: %v; restoring from the last checkpoint", step, err)
		s.Repathing = true
		act = policy.Decide(s, policy.Event{Kind: policy.RPCFailure})
	case policy.Restore:
		if act.Why != "" {
			cfg.Logf("no re-path for step %d: %s; restoring from the last checkpoint", step, act.Why)
		}
	}
	if rec.Kind == "" {
		if act.Kind != policy.Restore {
			return 0, fmt.Errorf("coordinator: recovering step %d: the policy chose %v (%s): %w", step, act.Kind, act.Why, cause)
		}
		from, err := r.restoreAll(ctx, step)
		if err != nil {
			return 0, fmt.Errorf("%w (recovering from: %w)", err, cause)
		}
		if from != act.From {
			// The policy names the newest checkpoint known; a damaged one
			// is skipped for an older one (restoreNewest).
			cfg.Logf("restored the checkpoint of step %d, not the newest known (%d)", from, act.From)
		}
		rec.Kind, rec.FromCheckpoint = "restore", from
		rec.Replayed = r.committer.Last().Step - from
		next = from + 1
	}
	rec.Epoch, rec.Workers = r.fence.Epoch, len(r.workers)
	rec.ResumedAt = cfg.clock().Now()
	rec.RecoveryS = rec.ResumedAt.Sub(det).Seconds()
	cfg.Logf("recovered from the failure of step %d by %s in %.3f s: epoch %d on %d workers (lost %v), next step %d",
		step, rec.Kind, rec.RecoveryS, rec.Epoch, rec.Workers, rec.Lost, next)
	r.recoveries = append(r.recoveries, rec)
	r.pendingCommit = append(r.pendingCommit, len(r.recoveries)-1)
	r.record(ctx, rec)
	return next, nil
}

// lapsed marks the watch's cause when a plan worker's registration
// vanished (its lease lapsed: a paused or cut-off worker) rather than
// being replaced.
type lapsed struct {
	error
	worker string
}

func (l lapsed) Unwrap() error { return l.error }

// failureEvent is the policy's event for an error that ended an
// iteration (or a rejoin, or the start): leadership lost, a failure a
// retry would repeat (or the caller stopping the job), a lapsed lease, a
// lost worker, or another RPC failure.
func failureEvent(parent context.Context, err error) policy.Event {
	e := policy.Event{Kind: policy.RPCFailure}
	var l lapsed
	switch {
	case errors.Is(err, etcdx.ErrDeposed):
		e.Kind = policy.LeaderChange
	case parent.Err() != nil || errors.Is(err, errNotDeterministic):
		e.Fatal = true
	case errors.As(err, &l):
		e.Kind, e.Workers = policy.LeaseLapse, []string{l.worker}
	case errors.Is(err, ErrWorkerLost):
		e.Kind = policy.WorkerLost
	}
	return e
}

// ends tells the run loop whether err ends the term (the policy steps
// down or gives up at once) rather than being recovered from.
func (r *run) ends(ctx context.Context, step int64, err error) bool {
	e := failureEvent(ctx, err)
	if e.Kind != policy.LeaderChange && !e.Fatal {
		return false
	}
	k := policy.Decide(r.state(step), e).Kind
	return k == policy.StepDown || k == policy.GiveUp
}

// family is the recovery family of the job's schedule, from what the
// planner's registry says it supports.
func (r *run) family() policy.Family {
	return policy.FamilyOf(r.fam.Repath, r.fam.Vacancy)
}

// placement is the current plan's workers and stages, for the policy.
func (r *run) placement() policy.Placement {
	pl := policy.Placement{StageWorkers: r.plan.StageWorkers()}
	for _, w := range r.workers {
		pl.Workers = append(pl.Workers, w.member.Name)
	}
	return pl
}

// pollEvery is how often a wait for replacements looks again.
const pollEvery = 200 * time.Millisecond

// state is what the policy knows of the run at step, before any probe.
func (r *run) state(step int64) policy.State {
	cfg := r.cfg
	s := policy.State{Family: r.family(), Want: cfg.Workers, Stages: cfg.Stages,
		Step: step, Steps: int64(cfg.Steps), Stepping: r.stepping, Checkpoints: []int64{r.ckptStep},
		Failures: r.failures, MaxFailures: cfg.MaxRecoveries, Poll: pollEvery, ReplanDrift: cfg.ReplanDrift,
		Recampaign: cfg.Recampaign, Now: cfg.clock().Now()}
	if r.plan != nil {
		s.Placement = r.placement()
	}
	if r.committer != nil {
		s.Committed = r.committer.Last().Step
	}
	return s
}

// probed is state(step) with the members that answered a probe (st) and
// the step each holds.
func (r *run) probed(step int64, live []etcdx.Member, st map[string]*pb.StatusResponse) policy.State {
	s := r.state(step)
	s.Probed = true
	for _, m := range live {
		if a, ok := st[m.Name]; ok {
			s.Live = append(s.Live, policy.Member{Name: m.Name, Applied: a.GetAppliedStep()})
		}
	}
	return s
}

// repath installs a plan on the survivors (names per stage, from
// policy.Decide) with the current placement minus the lost workers.
// Survivors keep their shards.
func (r *run) repath(ctx context.Context, parts [][]string, live []etcdx.Member) error {
	epoch, err := nextEpoch(ctx, r.leader.Client(), r.leader.Keys())
	if err != nil {
		return err
	}
	plan, ordered, layout, err := planOnPartition(r.cfg, members(parts, live), epoch, r.plan)
	if err != nil {
		return err
	}
	return r.install(ctx, plan, ordered, layout, false)
}

// members maps names per stage back to the registered members.
func members(parts [][]string, live []etcdx.Member) [][]etcdx.Member {
	by := map[string]etcdx.Member{}
	for _, m := range live {
		by[m.Name] = m
	}
	out := make([][]etcdx.Member, len(parts))
	for s, names := range parts {
		for _, n := range names {
			out[s] = append(out[s], by[n])
		}
	}
	return out
}

// planOn plans the job on members after a restore or for a rejoin:
// families that keep their placement get the members per stage
// (policy.Partition), the others place them by name.
func (r *run) planOn(members []etcdx.Member, epoch int64) (*scheduler.Plan, []etcdx.Member, model.Layout, error) {
	if r.fam.KeepsPlacement {
		return planOnPartition(r.cfg, r.partitionFor(members), epoch, r.plan)
	}
	return buildPlan(r.cfg, members, epoch)
}

// install stores plan as epoch's manifest, points the run at the workers
// in ordered (plan order), configures them (fresh: from the seed) and
// re-arms nothing: the caller's loop re-arms the membership watch.
func (r *run) install(ctx context.Context, plan *scheduler.Plan, ordered []etcdx.Member, layout model.Layout, fresh bool) error {
	cfg := r.cfg
	planJSON, planPath, planHash, err := storePlan(cfg.OutDir, plan)
	if err != nil {
		return err
	}
	man := PlanManifest{Epoch: plan.Epoch, Schedule: plan.Schedule, Stages: len(plan.Stages), SHA256: planHash, Bytes: len(planJSON), Path: planPath, LeaderRev: r.leader.Rev()}
	for i, w := range plan.Workers {
		man.Workers = append(man.Workers, PlanWorker{Name: ordered[i].Name, Addr: ordered[i].Addr, Stages: w.Stages, Replica: w.Replica})
	}
	if err := r.leader.PutJSON(ctx, r.leader.Keys().Plan(plan.Epoch), man); err != nil {
		return err
	}
	r.planHashes[plan.Epoch] = planHash
	workers := make([]*workerConn, len(ordered))
	for i, m := range ordered {
		w, err := r.conn(ctx, m)
		if err != nil {
			return err
		}
		// Plan slots are positions in this plan only: a fresh struct
		// per slot keeps an old plan's index from leaking.
		workers[i] = &workerConn{idx: i, member: m, cli: w.cli}
	}
	r.workers, r.plan, r.planPath, r.planHash = workers, plan, planPath, planHash
	r.fence = &pb.Fence{Job: cfg.Job, LeaderRev: r.leader.Rev(), Epoch: plan.Epoch}
	tc := cfg.Train
	tc.Stages = len(plan.Stages)
	tc.Layout = layout
	n, err := r.configureWith(ctx, planJSON, tc, fresh)
	if err != nil {
		return err
	}
	cfg.Logf("epoch %d plan installed: %s", plan.Epoch, StageMap(man.Workers))
	r.params = n
	r.planJSON, r.planTrain = planJSON, tc
	r.stats = newMeasurements(plan, cfg.Steps)
	return r.startReplanner()
}

// restoreAll rebuilds the plan on healthy workers (waiting for
// replacements), resets every shard, loads the last committed checkpoint
// and rewinds the data. It returns the checkpoint's step (0: the seeded
// initial state).
func (r *run) restoreAll(ctx context.Context, step int64) (int64, error) {
	members, err := r.gather(ctx, step)
	if err != nil {
		return 0, err
	}
	epoch, err := nextEpoch(ctx, r.leader.Client(), r.leader.Keys())
	if err != nil {
		return 0, err
	}
	plan, ordered, layout, err := r.planOn(members, epoch)
	if err != nil {
		return 0, err
	}
	if err := r.install(ctx, plan, ordered, layout, true); err != nil {
		return 0, err
	}
	ck, err := r.restoreNewest(ctx)
	if err != nil || ck == nil {
		return 0, err
	}
	return ck.Step, nil
}

// gather waits up to Config.ReplaceWait for Config.Workers healthy
// registered workers; the policy picks them (the current plan's survivors
// first, then others by name) or, once the wait is over, settles for
// fewer that can still hold the stages. It fails with ErrWorkerLost
// otherwise.
func (r *run) gather(ctx context.Context, step int64) ([]etcdx.Member, error) {
	cfg := r.cfg
	by := cfg.clock().Now().Add(cfg.ReplaceWait)
	for {
		live, st, err := r.healthy(ctx)
		if err != nil {
			return nil, err
		}
		s := r.probed(step, live, st)
		s.Restoring, s.ReplaceBy = true, by
		act := policy.Decide(s, policy.Event{Kind: policy.Tick})
		switch act.Kind {
		case policy.Restore:
			if len(act.Workers) < cfg.Workers {
				cfg.Logf("no replacement after %v: continuing on %d of %d workers", cfg.ReplaceWait, len(act.Workers), cfg.Workers)
			}
			return pick(act.Workers, live), nil
		case policy.Wait:
			select {
			case <-ctx.Done():
				return nil, context.Cause(ctx)
			case <-cfg.clock().After(act.Until.Sub(s.Now)):
			}
		default:
			return nil, fmt.Errorf("%w: %d healthy workers after waiting %v for replacements, need %d (at least %d)", ErrWorkerLost, len(s.Live), cfg.ReplaceWait, cfg.Workers, cfg.Stages)
		}
	}
}

// partitionFor places members on SkipPipe stages (policy.Partition).
func (r *run) partitionFor(ms []etcdx.Member) [][]etcdx.Member {
	return members(policy.Partition(r.placement(), names(ms), r.stageSizes), ms)
}

func names(ms []etcdx.Member) []string {
	out := make([]string, len(ms))
	for i, m := range ms {
		out[i] = m.Name
	}
	return out
}

// pick returns the members named, in the order of names.
func pick(names []string, ms []etcdx.Member) []etcdx.Member {
	return members([][]string{names}, ms)[0]
}

// maybeRejoin runs at an iteration boundary: registered workers outside
// the plan are offered to the policy, which has those not suspected
// probed and says who joins. It reports whether the plan changed.
func (r *run) maybeRejoin(ctx context.Context, step int64) (bool, error) {
	cfg := r.cfg
	snap := r.latest.Load()
	if snap == nil {
		return false, nil
	}
	inPlan := map[string]bool{}
	var all []etcdx.Member
	for _, w := range r.workers {
		inPlan[w.member.Name] = true
		all = append(all, w.member)
	}
	var cands []etcdx.Member
	s := r.state(step)
	s.AtBoundary, s.Suspects = true, map[string]bool{}
	for _, m := range *snap {
		if !inPlan[m.Name] {
			cands = append(cands, m)
			// Suspected under the lease it still holds.
			s.Suspects[m.Name] = r.suspect[m.Name] == m.Lease
		}
	}
	ev := policy.Event{Kind: policy.WorkerRegistered, Workers: names(cands)}
	act := policy.Decide(s, ev)
	if act.Kind != policy.Probe {
		return false, nil
	}
	st := r.probe(ctx, pick(act.Workers, cands))
	s.Probed = true
	for _, m := range cands {
		if a, ok := st[m.Name]; ok {
			s.Live = append(s.Live, policy.Member{Name: m.Name, Applied: a.GetAppliedStep()})
		}
	}
	act = policy.Decide(s, ev)
	if act.Kind != policy.Join {
		return false, nil
	}
	det := cfg.clock().Now()
	members := pick(act.Workers, append(all, cands...))
	rec := Recovery{Step: step, Kind: "rejoin", Cause: "workers available", DetectedAt: det, Joined: act.Joined}
	cfg.Logf("before step %d: %v join the plan", step, rec.Joined)
	// Hand the current state over through a checkpoint of the current
	// step outside the committed ones.
	applied := step - 1
	var handoff string
	var handoffShards []ShardDigest
	handoffLayers := planLayers(r.plan)
	if applied > 0 {
		base := r.handoffDir()
		shards, err := r.saveShards(ctx, "SaveCheckpoint (hand-off)", base, applied)
		if err != nil {
			return false, err
		}
		handoff, handoffShards = base, shards
		defer r.removeRetired([]string{base})
	}
	epoch, err := nextEpoch(ctx, r.leader.Client(), r.leader.Keys())
	if err != nil {
		return false, err
	}
	plan, ordered, layout, err := r.planOn(members, epoch)
	if err != nil {
		return false, err
	}
	if err := r.install(ctx, plan, ordered, layout, true); err != nil {
		return false, err
	}
	if handoff != "" {
		if err := r.loadState(ctx, "LoadCheckpoint (hand-off)", handoff, applied, handoffShards, handoffLayers); err != nil {
			return false, err
		}
	}
	rec.Epoch, rec.Workers = r.fence.Epoch, len(r.workers)
	rec.ResumedAt = cfg.clock().Now()
	rec.RecoveryS = rec.ResumedAt.Sub(det).Seconds()
	cfg.Logf("epoch %d: %d workers after %v joined (%.3f s)", rec.Epoch, rec.Workers, rec.Joined, rec.RecoveryS)
	r.recoveries = append(r.recoveries, rec)
	r.pendingCommit = append(r.pendingCommit, len(r.recoveries)-1)
	r.record(ctx, rec)
	return true, nil
}

// checkReplay compares a replayed step's loss with the committed one. It
// is exact only when the step runs under the plan it was committed with
// (the same plan hash); otherwise the reduction order may differ and the
// difference is only logged.
func (r *run) checkReplay(ctx context.Context, step int64, loss float64) error {
	c, found, err := r.committer.Record(ctx, step)
	if err != nil {
		return err
	}
	if !found {
		// Absent or forged (etcdx reported and counted it): nothing
		// trustworthy to compare with, and no reason to stop the job.
		r.cfg.Logf("replayed step %d: no trusted commit record; its loss %v is not checked", step, loss)
		return nil
	}
	same := false
	if h, ok := r.planHashes[c.Epoch]; ok {
		same = h == r.planHash
	} else {
		var m PlanManifest
		if ok, err := etcdx.GetJSON(ctx, r.leader.Client(), r.leader.Keys().Plan(c.Epoch), &m); err == nil && ok {
			r.planHashes[c.Epoch] = m.SHA256
			same = m.SHA256 == r.planHash
		}
	}
	if math.Float64bits(loss) == math.Float64bits(c.Loss) {
		return nil
	}
	if same {
		return fmt.Errorf("coordinator: replay of step %d gave loss %v, committed %v under the same plan: the run is not deterministic", step, loss, c.Loss)
	}
	r.cfg.Logf("replayed step %d under another plan than its commit's: loss %v (committed %v)", step, loss, c.Loss)
	return nil
}

// errNotDeterministic marks failures that a retry would repeat.
var errNotDeterministic = errors.New("coordinator: not retryable")
