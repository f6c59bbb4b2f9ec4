package coordinator

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"google.golang.org/grpc"

	"stagecoach/costmodel"
	"stagecoach/internal/etcdx"
	"stagecoach/internal/metrics"
	"stagecoach/internal/tlsx"
	"stagecoach/model"
	"stagecoach/planner"
	pb "stagecoach/proto"
	"stagecoach/scheduler"
	"stagecoach/timeline"
)

// Config is one training job as the coordinator runs it. Validate fills
// defaults and rejects what cannot run; New calls it.
type Config struct {
	// Job is the job id: every etcd key and every fence carries it.
	// Required; two jobs on one etcd never see each other's keys.
	Job string
	// Endpoints are etcd's client addresses. Required: the caller starts
	// an embedded etcd (etcdx.StartEmbedded) when it has no cluster.
	Endpoints []string
	// Name identifies this coordinator in the election; default "coordinator".
	Name string
	// TTL is the lease TTL in seconds (etcdx.DefaultTTL when 0) of the
	// coordinator's election session. A leader is deposed when its
	// keepalives go unanswered for a TTL, so under CPU starvation (a busy
	// host) a longer TTL than the workers' keeps a healthy leader; it
	// does not slow a graceful failover, where the leader resigns.
	TTL int
	// Recampaign makes a leader whose session expired (etcd or the
	// process starved past the TTL) campaign again in-process when nobody
	// else leads, instead of returning ErrDeposed; winning again, it
	// resumes the job like any new leader (from the committed steps).
	// With another leader in place it returns ErrDeposed as before.
	// A standby whose session expires while it campaigns starts a new
	// session either way.
	Recampaign bool

	// Workers is how many registered workers the job waits for and uses.
	Workers int
	// Schedule names a scheduler generator ("gpipe", "1f1b", ...) or
	// "skippipe".
	Schedule string
	// AllReduce overrides the plan's all-reduce algorithm on replicated
	// stages (scheduler.OverrideAllReduce): "" keeps the schedule's own
	// (ordered, exact, for the classic schedules; the cheaper of ring and
	// direct for SkipPipe), "auto" picks the cheaper under the planning
	// cost model, or "ring", "direct", "ordered".
	AllReduce string
	// Stages is the pipeline depth; 0 means Workers (one stage each).
	// Workers must be a multiple of it: the rest are stage replicas.
	Stages int
	// Train is the model, microbatch split and optimizer. Its
	// Microbatches and MicrobatchSize are required; Optim.TotalSteps is
	// set to Steps, as the single-process trainer does.
	Train model.TrainConfig
	// Steps is the number of optimizer steps to run.
	Steps int
	// CorpusDir is the training text; "" means data.DefaultCorpusDir().
	CorpusDir string
	// MaxCorpusBytes caps the corpus (data.DefaultMaxBytes when 0).
	MaxCorpusBytes int64

	// OutDir receives the plan files (by content hash), the run summary
	// and checkpoints. Required.
	OutDir string
	// Checkpoint asks every worker to save its shards after the last step
	// under CheckpointDir; the checkpoint manifest (with the data
	// position and every shard's size and SHA-256) is committed in etcd
	// in the same transaction as its step.
	Checkpoint bool
	// CheckpointDir is the checkpoint root (default OutDir/checkpoints):
	// the workers write there (it must be their checkpoint root or under
	// it), and the coordinator uses and deletes only listed checkpoints
	// under it. Coordinators of one job share it.
	CheckpointDir string
	// Backend, when set, names the compute backend every worker must
	// compute with (compute.Backend.Name: "go", "torch", ...); a worker
	// with another refuses the job's Configure.
	Backend string
	// InitFrom, when set, is the state a new job starts from instead of
	// the seed (model.OpenCheckpoint: a whole-model file or another job's
	// shard set), whose model must be Train.Model's: its weights, optimizer
	// moments and step (the job then runs steps Step+1..Steps and commits
	// from Step+1). It is cut into the plan's stages under
	// CheckpointDir/init and loaded like any checkpoint (init.go). Every
	// coordinator of the job, and every run resuming it, must be given the
	// same.
	InitFrom *model.Checkpoint
	// InitWeightsOnly takes only InitFrom's weights: fresh optimizer
	// moments, and the job runs steps 1..Steps.
	InitWeightsOnly bool
	// CheckpointEvery also checkpoints every that many steps (0: never).
	// A job whose last committed step has a checkpoint resumes from it
	// when a coordinator runs it again (after a crash or failover); a job
	// whose last committed step has none is refused.
	CheckpointEvery int

	// Retain is how many committed checkpoints stay listed in etcd and on
	// disk (default 3; negative keeps all). Older ones are unlisted in the
	// commit that lists a new one, then their files are removed.
	Retain int
	// ReplaceWait bounds the wait for replacement workers after a loss
	// (default 3 TTLs); after it the job continues on fewer workers when
	// they can hold the stages.
	ReplaceWait time.Duration
	// ProbeTimeout bounds the Status probe that tells live workers from
	// lost ones after a failure (default 1 s).
	ProbeTimeout time.Duration
	// MaxRecoveries is how many recoveries in a row (without a committed
	// step in between) are tried before the run gives up (default 8).
	MaxRecoveries int
	// OnRecovery, when set, is called when a recovery's first step is
	// committed (and for recoveries still pending when the run ends).
	OnRecovery func(Recovery)

	// RPCTimeout bounds one control RPC (default 5 min: an iteration of a
	// big model is one RPC).
	RPCTimeout time.Duration
	// WaitTimeout bounds the wait for workers to register (default 2 min).
	WaitTimeout time.Duration
	// Dial connects to a worker's gRPC address; nil means
	// DialWorkerTLS(TLS): plaintext unless TLS is set.
	Dial func(ctx context.Context, addr string) (pb.WorkerClient, func() error, error)
	// TLS, when set, is this node's mutual TLS configuration
	// (tlsx.Load): the coordinator presents its certificate to the
	// workers and to etcd (whose endpoints are then https) and verifies
	// theirs against the CA. nil talks plaintext.
	TLS *tls.Config
	// Cluster, when set, is a cluster YAML (costmodel; see ScaleLinks): every
	// worker emulates its links (link_shaping_yaml; workers are matched
	// to its nodes by registered name), and the planner prices hops with
	// it. When its workload's stage_nodes sum to Workers, SkipPipe plans
	// use those stage sizes (stages may then differ in node count).
	Cluster []byte
	// Costs is the cost model the planner starts from (a calibration,
	// e.g. from `stagecoach calibrate`); nil means Cluster's nominal
	// costs, or uniform ones without a Cluster. The coordinator replaces
	// it with its own calibration when it replans.
	Costs *costmodel.Cluster
	// Simulator runs plans against cost models (sim.Simulator; the
	// coordinator does not link the simulator itself). With one, SkipPipe
	// candidates are judged by their simulated iteration and the summary
	// carries the calibrated simulation beside the measured run (span and
	// bubble, trace.json); nil leaves both out: the planner judges
	// candidates by its own estimate.
	Simulator timeline.Simulator
	// ReplanDrift, when > 0, makes the coordinator keep a cost model
	// calibrated from the workers' reported timings and replan (a new
	// epoch, between two steps) when it drifts from the one the current
	// plan was made with by more than this fraction (0.5: a node's
	// compute or a link's measured overhead off by 50%).
	ReplanDrift float64
	// Balance places the layers of a classic schedule's stages for the
	// planning cost model (Costs, else Cluster; nothing happens without
	// either): contiguous ranges sized for the nodes' speeds and the
	// head's cost, kept when the simulator (if any) says the iteration
	// is faster than on the even split. A replan keeps the ranges of the
	// plan it replaces. SkipPipe places its own layers.
	Balance bool
	// ReplanWarmup is how many steps of a plan are measured before its
	// drift is judged (default 2: the first step of a plan pays for
	// allocations and connections).
	ReplanWarmup int

	// OnStep, when set, is called after every committed step.
	OnStep func(StepReport)
	// Metrics receives the coordinator's Prometheus metrics (steps,
	// iteration time, recoveries, epoch, leadership); nil records none.
	Metrics *metrics.Coordinator
	// Logf receives progress lines; nil discards them.
	Logf func(format string, args ...any)
}

// Defaults.
const (
	DefaultRPCTimeout  = 5 * time.Minute
	DefaultWaitTimeout = 2 * time.Minute
	// MaxControlBytes bounds the control messages the coordinator sends
	// and receives (a plan, an iteration's windows).
	MaxControlBytes = 64 << 20
)

// Validate fills defaults and reports the first field that cannot run.
func (c *Config) Validate() error {
	if err := etcdx.ValidateJob(c.Job); err != nil {
		return fmt.Errorf("coordinator: %w", err)
	}
	if len(c.Endpoints) == 0 {
		return errors.New("coordinator: no etcd endpoints")
	}
	if c.Name == "" {
		c.Name = "coordinator"
	}
	if c.TTL == 0 {
		c.TTL = etcdx.DefaultTTL
	}
	if c.TTL < etcdx.MinTTL {
		return fmt.Errorf("coordinator: lease TTL %d s is below etcd's minimum %d s", c.TTL, etcdx.MinTTL)
	}
	if c.Workers < 1 {
		return fmt.Errorf("coordinator: workers is %d, want >= 1", c.Workers)
	}
	fam, err := family(c)
	if err != nil {
		return err
	}
	if c.Balance && fam.Kind != planner.KindClassic {
		return fmt.Errorf("coordinator: balance: schedule %s places its own layers; balancing is for the classic schedules", c.Schedule)
	}
	if err := scheduler.CheckAllReduceOverride(c.AllReduce); err != nil {
		return fmt.Errorf("coordinator: %w", err)
	}
	if c.Stages == 0 {
		c.Stages = c.Workers
	}
	if len(c.Cluster) > 0 {
		if _, err := costmodel.ParseCluster(c.Cluster); err != nil {
			return fmt.Errorf("coordinator: cluster: %w", err)
		}
	}
	if c.ReplanDrift < 0 || c.ReplanWarmup < 0 {
		return fmt.Errorf("coordinator: replan drift %v and warm-up %d must not be negative", c.ReplanDrift, c.ReplanWarmup)
	}
	if c.ReplanWarmup == 0 {
		c.ReplanWarmup = 2
	}
	unequal := fam.UnequalStages && c.clusterStageSizes() != nil
	if unequal {
		// The cluster's workload fixes the stages, with as many nodes
		// each as it lists (SkipPipe's [5,3,3,3,3,3]).
		c.Stages = len(c.clusterStageSizes())
	}
	if c.Stages < 1 || (!unequal && c.Workers%c.Stages != 0) {
		return fmt.Errorf("coordinator: %d workers cannot hold %d stages with equal replicas", c.Workers, c.Stages)
	}
	if c.Steps < 1 {
		return fmt.Errorf("coordinator: steps is %d, want >= 1", c.Steps)
	}
	t := &c.Train
	if t.Microbatches < 1 || t.MicrobatchSize < 1 {
		return fmt.Errorf("coordinator: microbatches and microbatch size must be positive (got %d, %d)", t.Microbatches, t.MicrobatchSize)
	}
	if c.Workers/c.Stages > t.Microbatches {
		return fmt.Errorf("coordinator: %d replicas per stage but only %d microbatches", c.Workers/c.Stages, t.Microbatches)
	}
	t.Model = t.Model.WithDefaults()
	if err := t.Model.Validate(); err != nil {
		return fmt.Errorf("coordinator: %w", err)
	}
	if t.Model.Layers < c.Stages {
		return fmt.Errorf("coordinator: %d layers cannot fill %d stages", t.Model.Layers, c.Stages)
	}
	t.Optim.TotalSteps = c.Steps
	t.Optim = t.Optim.WithDefaults()
	if err := t.Optim.Validate(); err != nil {
		return fmt.Errorf("coordinator: %w", err)
	}
	t.Stages = c.Stages
	if err := c.checkInit(); err != nil {
		return err
	}
	if c.CheckpointEvery < 0 {
		return fmt.Errorf("coordinator: checkpoint interval %d is negative", c.CheckpointEvery)
	}
	if c.OutDir == "" {
		return errors.New("coordinator: no output directory")
	}
	if c.CheckpointDir == "" {
		c.CheckpointDir = filepath.Join(c.OutDir, "checkpoints")
	}
	abs, err := filepath.Abs(c.CheckpointDir)
	if err != nil {
		return fmt.Errorf("coordinator: checkpoint dir: %w", err)
	}
	c.CheckpointDir = abs
	if c.Retain == 0 {
		c.Retain = 3
	}
	if c.ReplaceWait == 0 {
		c.ReplaceWait = time.Duration(3*c.TTL) * time.Second
	}
	if c.ProbeTimeout == 0 {
		c.ProbeTimeout = time.Second
	}
	if c.MaxRecoveries == 0 {
		c.MaxRecoveries = 8
	}
	if c.RPCTimeout == 0 {
		c.RPCTimeout = DefaultRPCTimeout
	}
	if c.WaitTimeout == 0 {
		c.WaitTimeout = DefaultWaitTimeout
	}
	if c.Dial == nil {
		c.Dial = DialWorkerTLS(c.TLS)
	}
	if c.Logf == nil {
		c.Logf = func(string, ...any) {}
	}
	return nil
}

// DialWorker opens a plaintext gRPC connection to a worker with the
// control message limits raised to MaxControlBytes.
func DialWorker(ctx context.Context, addr string) (pb.WorkerClient, func() error, error) {
	return DialWorkerTLS(nil)(ctx, addr)
}

// DialWorkerTLS is DialWorker over mutual TLS with tc (tlsx.Load); nil
// is DialWorker.
func DialWorkerTLS(tc *tls.Config) func(ctx context.Context, addr string) (pb.WorkerClient, func() error, error) {
	creds := tlsx.DialOption(tc)
	return func(_ context.Context, addr string) (pb.WorkerClient, func() error, error) {
		conn, err := grpc.NewClient(addr, creds,
			grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(MaxControlBytes), grpc.MaxCallSendMsgSize(MaxControlBytes)))
		if err != nil {
			return nil, nil, fmt.Errorf("coordinator: dial worker at %s: %w", addr, err)
		}
		return pb.NewWorkerClient(conn), conn.Close, nil
	}
}
