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

// Failure handling.
//
// A plan worker is lost when its lease lapses (the membership watch
// cancels the epoch's context), when one of its RPCs or peer streams fails,
// or when an RPC passes its deadline, whichever comes first. The in-flight
// iteration is then abandoned and one of two recoveries runs under a new
// epoch (the workers drop every tensor and command of older epochs):
//
//   - Re-path (SkipPipe only): the iteration failed before any Step was
//     sent, so every survivor still holds exactly the committed step's
//     parameters. The plan is rebuilt on the survivors with the same
//     placement minus the lost workers (the stage keeps its other replicas)
//     and the same iteration is retried with the same windows. Nothing is
//     restored.
//
//   - Restore (every schedule, and SkipPipe when re-pathing is impossible):
//     the plan is rebuilt on the survivors plus replacements (or on fewer
//     workers when no replacement comes), every shard is reset and loaded
//     from the last committed checkpoint, the sampler is rewound to its data
//     position, and the steps committed after that checkpoint are replayed
//     without being committed again (their losses must match the committed
//     ones bit for bit when the plan is the one they were committed under).
//
// No partial step survives either way. Step is sent only after every
// RunIteration succeeded; if a worker fails during the Step fan-out, some
// workers may have applied the step and others not, and the step was not
// committed. Re-pathing is then refused and the restore path reloads every
// shard from the checkpoint, so the stepped workers are rolled back too.
//
// A worker that appears (a replacement, or a lost one that registered
// again) while the plan is short of Config.Workers joins at the next
// iteration boundary: every plan worker saves its shards at the current
// step into a hand-off directory, the new plan is installed and every
// worker loads from there (SkipPipe replicas are bit-identical, so any
// replica's file is the stage's state).

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
					cancel(fmt.Errorf("%w: plan worker %d (%s at %s) left the job (lease %x lapsed or replaced)", ErrWorkerLost, i, m.Name, m.Addr, m.Lease))
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
func (r *run) recover(ctx context.Context, step int64, cause error) (int64, error) {
	cfg := r.cfg
	det := time.Now()
	if r.stopWatch != nil {
		r.stopWatch(nil)
	}
	r.failures++
	if r.failures > cfg.MaxRecoveries {
		return 0, fmt.Errorf("coordinator: step %d failed %d times in a row, giving up: %w", step, r.failures-1, cause)
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
	dec := policy.Decide(r.failure(step, live, st))
	rec.Lost = dec.Lost
	next := step
	if dec.Action == policy.Repath {
		err = r.repath(ctx, dec.Parts, live)
		if err == nil {
			rec.Kind, rec.Vacant = "repath", r.plan.VacantStages()
		} else {
			cfg.Logf("re-path after step %d failed: %v; restoring from the last checkpoint", step, err)
		}
	} else if dec.Why != "" {
		cfg.Logf("no re-path for step %d: %s; restoring from the last checkpoint", step, dec.Why)
	}
	if rec.Kind == "" {
		from, err := r.restoreAll(ctx, step)
		if err != nil {
			return 0, fmt.Errorf("%w (recovering from: %w)", err, cause)
		}
		rec.Kind, rec.FromCheckpoint = "restore", from
		rec.Replayed = r.committer.Last().Step - from
		next = from + 1
	}
	rec.Epoch, rec.Workers = r.fence.Epoch, len(r.workers)
	rec.ResumedAt = time.Now()
	rec.RecoveryS = rec.ResumedAt.Sub(det).Seconds()
	cfg.Logf("recovered from the failure of step %d by %s in %.3f s: epoch %d on %d workers (lost %v), next step %d",
		step, rec.Kind, rec.RecoveryS, rec.Epoch, rec.Workers, rec.Lost, next)
	r.recoveries = append(r.recoveries, rec)
	r.pendingCommit = append(r.pendingCommit, len(r.recoveries)-1)
	r.record(ctx, rec)
	return next, nil
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

// failure is what the policy needs to decide a recovery of step: the
// plan, and the step each surviving plan worker holds.
func (r *run) failure(step int64, live []etcdx.Member, st map[string]*pb.StatusResponse) policy.Failure {
	f := policy.Failure{Family: r.family(), Step: step, Stepping: r.stepping, Placement: r.placement(), Applied: map[string]int64{}}
	inPlan := map[string]bool{}
	for _, n := range f.Workers {
		inPlan[n] = true
	}
	for _, m := range live {
		if inPlan[m.Name] {
			f.Applied[m.Name] = st[m.Name].GetAppliedStep()
		}
	}
	return f
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
	members, err := r.gather(ctx)
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
// registered workers (the current plan's survivors first, then others by
// name). After that it settles for fewer when they can still hold the
// stages: a multiple of Stages for classic schedules, at least one per
// stage for SkipPipe. It fails with ErrWorkerLost otherwise.
func (r *run) gather(ctx context.Context) ([]etcdx.Member, error) {
	cfg := r.cfg
	deadline := time.Now().Add(cfg.ReplaceWait)
	for {
		live, _, err := r.healthy(ctx)
		if err != nil {
			return nil, err
		}
		if len(live) >= cfg.Workers {
			return r.prefer(live, cfg.Workers), nil
		}
		if time.Now().After(deadline) {
			if n, ok := policy.Settle(r.family(), len(live), cfg.Workers, cfg.Stages); ok {
				cfg.Logf("no replacement after %v: continuing on %d of %d workers", cfg.ReplaceWait, n, cfg.Workers)
				return r.prefer(live, n), nil
			}
			return nil, fmt.Errorf("%w: %d healthy workers after waiting %v for replacements, need %d (at least %d)", ErrWorkerLost, len(live), cfg.ReplaceWait, cfg.Workers, cfg.Stages)
		}
		select {
		case <-ctx.Done():
			return nil, context.Cause(ctx)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// prefer picks n of live (policy.Prefer): current plan workers first,
// then by name, sorted by name.
func (r *run) prefer(live []etcdx.Member, n int) []etcdx.Member {
	inPlan := map[string]bool{}
	for _, w := range r.workers {
		inPlan[w.member.Name] = true
	}
	return pick(policy.Prefer(names(live), inPlan, n), live)
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

// maybeRejoin runs at an iteration boundary: when the plan is short of
// Config.Workers and healthy registered workers are outside it, they join.
// It reports whether the plan changed.
func (r *run) maybeRejoin(ctx context.Context, step int64) (bool, error) {
	cfg := r.cfg
	if len(r.workers) >= cfg.Workers {
		return false, nil
	}
	snap := r.latest.Load()
	if snap == nil {
		return false, nil
	}
	inPlan := map[string]bool{}
	for _, w := range r.workers {
		inPlan[w.member.Name] = true
	}
	var cands []etcdx.Member
	for _, m := range *snap {
		if !inPlan[m.Name] && r.suspect[m.Name] != m.Lease {
			cands = append(cands, m)
		}
	}
	if len(cands) == 0 {
		return false, nil
	}
	st := r.probe(ctx, cands)
	var joined []etcdx.Member
	for _, m := range cands {
		if _, ok := st[m.Name]; ok {
			joined = append(joined, m)
		}
	}
	if len(joined) == 0 {
		return false, nil
	}
	det := time.Now()
	all := make([]etcdx.Member, 0, len(r.workers)+len(joined))
	for _, w := range r.workers {
		all = append(all, w.member)
	}
	all = append(all, joined...)
	chosen := policy.Rejoin(r.family(), names(all[:len(r.workers)]), names(joined), cfg.Workers, cfg.Stages)
	if chosen == nil {
		return false, nil
	}
	members := pick(chosen, all)
	rec := Recovery{Step: step, Kind: "rejoin", Cause: "workers available", DetectedAt: det}
	for _, m := range members {
		if !inPlan[m.Name] {
			rec.Joined = append(rec.Joined, m.Name)
		}
	}
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
	rec.ResumedAt = time.Now()
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

// errRetryable tells the run loop whether a failed iteration may be
// recovered: everything but the loss of leadership or of the caller's
// context, and arithmetic that a retry would only repeat.
func errRetryable(parent context.Context, err error) bool {
	if parent.Err() != nil || errors.Is(err, etcdx.ErrDeposed) || errors.Is(err, errNotDeterministic) {
		return false
	}
	return true
}

// errNotDeterministic marks failures that a retry would repeat.
var errNotDeterministic = errors.New("coordinator: not retryable")
