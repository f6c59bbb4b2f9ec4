package metrics

import (
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Recovery kinds counted in stagecoach_coordinator_recoveries_total. The
// first three are the coordinator's own Recovery.Kind values.
const (
	// RecoveryRepath: a lost worker's microbatches re-pathed over the
	// survivors of its stage, no restore.
	RecoveryRepath = "repath"
	// RecoveryRestore: a new plan on the remaining workers, every shard
	// reloaded from the last checkpoint.
	RecoveryRestore = "restore"
	// RecoveryRejoin: returning or spare workers taken back into the plan.
	RecoveryRejoin = "rejoin"
	// RecoveryLeaderResume: a new leader took over a job that had
	// committed steps (after a crash or failover).
	RecoveryLeaderResume = "leader_resume"
	// RecoveryReplanDrift: a new plan because the measured costs drifted.
	RecoveryReplanDrift = "replan_drift"
)

// Reasons a listed checkpoint is skipped, the reason label of
// stagecoach_coordinator_checkpoints_skipped_total.
const (
	// SkipCorrupt: a shard's size or SHA-256 is not the listed one, or it
	// does not parse; the previous listed checkpoint is used.
	SkipCorrupt = "corrupt"
	// SkipMissing: a shard file of the listed checkpoint is gone.
	SkipMissing = "missing"
	// SkipOutsideRoot: the listing names a directory outside the
	// coordinator's checkpoint root; it is neither loaded nor deleted.
	SkipOutsideRoot = "outside_root"
	// SkipUnverifiable: the listing has no digest for some stage's shard.
	SkipUnverifiable = "unverifiable"
)

// Coordinator is a coordinator's instruments. A nil *Coordinator records
// nothing.
type Coordinator struct {
	steps      prometheus.Counter
	step       prometheus.Gauge
	tokens     prometheus.Counter
	loss       prometheus.Gauge
	iteration  prometheus.Histogram
	recoveries *prometheus.CounterVec
	skipped    *prometheus.CounterVec
	epoch      prometheus.Gauge
	leader     prometheus.Gauge
	token      prometheus.Gauge

	// The current epoch and token, for log lines (Epoch, FencingToken).
	epochNow, tokenNow atomic.Int64
}

// NewCoordinator registers a coordinator's metrics in reg:
//
//	stagecoach_coordinator_steps_committed_total      optimizer steps committed in etcd by this process
//	stagecoach_coordinator_committed_step             the last step it committed
//	stagecoach_coordinator_tokens_total               training tokens of those steps
//	stagecoach_coordinator_loss                       training loss of the last committed step (nats/byte)
//	stagecoach_coordinator_iteration_duration_seconds wall time of a committed step (data, RunIteration, Step, checkpoint, commit)
//	stagecoach_coordinator_recoveries_total{kind}     repath, restore, rejoin, leader_resume, replan_drift
//	stagecoach_coordinator_checkpoints_skipped_total{reason} listed checkpoints not used: corrupt, missing, outside_root, unverifiable
//	stagecoach_coordinator_plan_epoch                 plan epoch in force
//	stagecoach_coordinator_is_leader                  1 while this process leads the job
//	stagecoach_coordinator_fencing_token              the leader's fencing token (election revision)
func NewCoordinator(reg prometheus.Registerer) *Coordinator {
	c := &Coordinator{
		steps: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "stagecoach_coordinator_steps_committed_total",
			Help: "Optimizer steps this coordinator committed in etcd (replayed steps are not counted again).",
		}),
		step: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "stagecoach_coordinator_committed_step",
			Help: "The last step this coordinator committed.",
		}),
		tokens: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "stagecoach_coordinator_tokens_total",
			Help: "Training tokens (bytes) of the steps this coordinator committed.",
		}),
		loss: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "stagecoach_coordinator_loss",
			Help: "Training loss of the last committed step, in nats per byte.",
		}),
		iteration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "stagecoach_coordinator_iteration_duration_seconds",
			Help:    "Wall time of one committed step: drawing data, RunIteration, Step, checkpoint and the etcd commit.",
			Buckets: prometheus.ExponentialBuckets(0.01, 2, 15),
		}),
		recoveries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "stagecoach_coordinator_recoveries_total",
			Help: "Recoveries by kind: repath, restore and rejoin (counted at their first committed step), leader_resume (a leader taking over committed steps), replan_drift (a new plan for drifted costs).",
		}, []string{"kind"}),
		skipped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "stagecoach_coordinator_checkpoints_skipped_total",
			Help: "Listed checkpoints not used, by reason: corrupt (a shard fails its size, SHA-256 or parse), missing (a shard file is gone), outside_root (the listing names a directory outside the checkpoint root), unverifiable (no digest for a shard).",
		}, []string{"reason"}),
		epoch: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "stagecoach_coordinator_plan_epoch",
			Help: "Plan epoch in force (bumped on every membership change or replan).",
		}),
		leader: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "stagecoach_coordinator_is_leader",
			Help: "1 while this coordinator leads the job, else 0.",
		}),
		token: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "stagecoach_coordinator_fencing_token",
			Help: "Fencing token (election revision) of this coordinator's leadership; 0 before it first leads.",
		}),
	}
	for _, k := range []string{RecoveryRepath, RecoveryRestore, RecoveryRejoin, RecoveryLeaderResume, RecoveryReplanDrift} {
		c.recoveries.WithLabelValues(k)
	}
	for _, r := range []string{SkipCorrupt, SkipMissing, SkipOutsideRoot, SkipUnverifiable} {
		c.skipped.WithLabelValues(r)
	}
	reg.MustRegister(c.steps, c.step, c.tokens, c.loss, c.iteration, c.recoveries, c.skipped, c.epoch, c.leader, c.token)
	return c
}

// StepCommitted records a committed step: its number, wall time, tokens
// and loss.
func (c *Coordinator) StepCommitted(step int64, wall time.Duration, tokens int64, loss float64) {
	if c == nil {
		return
	}
	c.steps.Inc()
	c.step.Set(float64(step))
	c.tokens.Add(float64(tokens))
	c.loss.Set(loss)
	c.iteration.Observe(wall.Seconds())
}

// Recovered counts one recovery of the given kind.
func (c *Coordinator) Recovered(kind string) {
	if c == nil {
		return
	}
	c.recoveries.WithLabelValues(kind).Inc()
}

// CheckpointSkipped counts one listed checkpoint not used, for reason.
func (c *Coordinator) CheckpointSkipped(reason string) {
	if c == nil {
		return
	}
	c.skipped.WithLabelValues(reason).Inc()
}

// SetEpoch records the plan epoch in force.
func (c *Coordinator) SetEpoch(epoch int64) {
	if c == nil {
		return
	}
	c.epochNow.Store(epoch)
	c.epoch.Set(float64(epoch))
}

// Leading records that this process won the job's leadership with token.
func (c *Coordinator) Leading(token int64) {
	if c == nil {
		return
	}
	c.tokenNow.Store(token)
	c.token.Set(float64(token))
	c.leader.Set(1)
}

// NotLeading records that this process no longer leads (it resigned or
// was deposed); the token keeps its last value.
func (c *Coordinator) NotLeading() {
	if c == nil {
		return
	}
	c.leader.Set(0)
}

// Epoch is the plan epoch last recorded (0: none yet), for log lines.
func (c *Coordinator) Epoch() int64 {
	if c == nil {
		return 0
	}
	return c.epochNow.Load()
}

// FencingToken is the token last recorded by Leading (0: none yet).
func (c *Coordinator) FencingToken() int64 {
	if c == nil {
		return 0
	}
	return c.tokenNow.Load()
}
