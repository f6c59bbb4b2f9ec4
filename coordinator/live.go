package coordinator

import (
	"context"
	"time"
)

// What the coordinator records for a live view of the job (`stagecoach
// status`, the live page): recoveries go to etcd, where any reader of the
// job finds them; the last step's per-worker timeline travels with its
// StepReport to whoever serves the page.

// RecoveriesKept bounds the recovery records etcd keeps per job: a PUT of
// a new one deletes the oldest beyond it in the same transaction.
const RecoveriesKept = 32

// KindTakeover is the recovery record of a coordinator that took over a
// job with committed steps (a failover or a restarted coordinator). It is
// recorded in etcd only; Summary.Recoveries lists the failures this
// coordinator itself recovered from.
const KindTakeover = "takeover"

// TimedAction is one action a worker ran in a step, as the worker timed
// it, in seconds from the step's first action.
type TimedAction struct {
	Worker string  `json:"worker"`
	Stage  int     `json:"stage"`
	Action string  `json:"action"`
	StartS float64 `json:"start_s"`
	EndS   float64 `json:"end_s"`
}

// timeline is the last measured step's actions, by worker name.
func (r *run) timeline() []TimedAction {
	out := make([]TimedAction, 0, len(r.stats.last))
	for _, s := range r.stats.last {
		if s.Worker < 0 || s.Worker >= len(r.workers) {
			continue
		}
		out = append(out, TimedAction{Worker: r.workers[s.Worker].member.Name, Stage: s.Action.Stage,
			Action: s.Action.String(), StartS: s.Start, EndS: s.End})
	}
	return out
}

// record writes rec to the job's recovery log in etcd. The log is for
// people watching the job: a failed write is logged, never fatal (a
// deposed leader finds out through its next fenced write anyway).
func (r *run) record(ctx context.Context, rec Recovery) {
	ttl := time.Duration(r.cfg.TTL) * time.Second
	wctx, cancel := context.WithTimeout(ctx, ttl)
	defer cancel()
	k := r.leader.Keys()
	if err := r.leader.PutCapped(wctx, k.RecoveriesPrefix(), k.Recovery(rec.DetectedAt.UnixNano()), rec, RecoveriesKept); err != nil {
		r.cfg.Logf("record the %s of step %d in etcd: %v", rec.Kind, rec.Step, err)
	}
}

// recordTakeover records that this leader took over a job whose last
// committed step is last, resuming at step first.
func (r *run) recordTakeover(ctx context.Context, det time.Time, first, last int64) {
	rec := Recovery{Step: first, Kind: KindTakeover, Cause: "leader " + r.cfg.Name + " took over", DetectedAt: det,
		Epoch: r.fence.Epoch, Workers: len(r.workers), FromCheckpoint: first - 1, Replayed: last - (first - 1)}
	rec.ResumedAt = r.cfg.clock().Now()
	rec.RecoveryS = rec.ResumedAt.Sub(det).Seconds()
	r.record(ctx, rec)
}
