package coordinator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"stagecoach/data"
	"stagecoach/internal/etcdx"
	"stagecoach/internal/metrics"
	"stagecoach/model"
	"stagecoach/planner"
	pb "stagecoach/proto"
	"stagecoach/scheduler"
)

// ErrJobFinished means the job already committed all its steps: a
// coordinator that wins leadership then (a standby outliving the leader
// that finished) has nothing to do.
var ErrJobFinished = errors.New("coordinator: job finished")

// Coordinator runs one job: it wins leadership, places stages on the
// registered workers, hands them the plan and drives iterations.
type Coordinator struct {
	cfg Config
}

// New validates cfg.
func New(cfg Config) (*Coordinator, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Coordinator{cfg: cfg}, nil
}

// Config returns the validated configuration (defaults filled).
func (c *Coordinator) Config() Config { return c.cfg }

// workerConn is one plan worker's control connection.
type workerConn struct {
	idx    int
	member etcdx.Member
	cli    pb.WorkerClient
	close  func() error
}

// run is the state of one leadership term.
type run struct {
	cfg       *Config
	leader    *etcdx.Leader
	committer *etcdx.Committer
	plan      *scheduler.Plan
	fence     *pb.Fence
	workers   []*workerConn
	sampler   *data.Sampler
	ctxLen    int
	stats     *measurements
	// drift watches the cost model for replanning (calibrate.go).
	drift *replanner
	// lastCheckpoint is the directory of the last committed checkpoint.
	lastCheckpoint string
	// init is the initial checkpoint as last cut (Config.InitFrom).
	init *CheckpointManifest

	// Failure handling (recover.go).
	conns         map[string]*workerConn // open connections by worker name
	stopWatch     context.CancelCauseFunc
	latest        atomic.Pointer[[]etcdx.Member] // last membership seen
	suspect       map[string]int64               // name -> lease that did not answer
	failures      int                            // recoveries since the last commit
	stepping      bool                           // the Step fan-out has started
	recoveries    []Recovery
	pendingCommit []int // recoveries waiting for their first commit
	planHashes    map[int64]string
	planPath      string
	planHash      string
	planJSON      []byte            // the plan in force, as sent
	planTrain     model.TrainConfig // the model config sent with it
	params        int64
	initialData   string         // sampler state before any draw
	stageSizes    []int          // SkipPipe: configured workers per stage
	fam           planner.Family // the schedule's family: what it supports
}

// Run campaigns for the job, waits for the workers, trains cfg.Steps steps
// and returns the run summary. A job that already committed steps (a
// crashed or deposed leader's) resumes: from its last listed checkpoint,
// replaying the committed steps after it without committing them again.
// A lost worker is recovered from (recover.go). A job that already
// committed all its steps fails with ErrJobFinished.
func (c *Coordinator) Run(ctx context.Context) (*Summary, error) {
	cfg := &c.cfg
	cli, err := etcdx.DialTLS(ctx, cfg.Endpoints, 0, cfg.TLS)
	if err != nil {
		return nil, err
	}
	defer cli.Close()
	keys, err := etcdx.NewKeys(cfg.Job)
	if err != nil {
		return nil, err
	}
	for {
		sum, err := c.term(ctx, cli, keys)
		if err == nil || !cfg.Recampaign || ctx.Err() != nil || !errors.Is(err, etcdx.ErrDeposed) {
			return sum, err
		}
		// Deposed with nobody else leading: the session expired under
		// a leader that was only slow. Another leader, or no answer,
		// and this one steps down.
		qctx, cancel := context.WithTimeout(ctx, time.Duration(cfg.TTL)*time.Second)
		other, qerr := someoneLeads(qctx, cli, keys)
		cancel()
		if qerr != nil || other {
			return sum, err
		}
		cfg.Logf("%v; nobody else leads: campaigning again", err)
	}
}

// someoneLeads reports whether the job's election has a leader key (the
// oldest key under its prefix).
func someoneLeads(ctx context.Context, cli *clientv3.Client, keys etcdx.Keys) (bool, error) {
	resp, err := cli.Get(ctx, keys.ElectionPrefix(), clientv3.WithFirstCreate()...)
	if err != nil {
		return false, fmt.Errorf("coordinator: read the leader of job %s: %w", keys.Job(), err)
	}
	return len(resp.Kvs) > 0, nil
}

// term is one session of Run: it campaigns and, once elected, leads until
// the job ends or the session does. A session that expires while
// campaigning is replaced by a new one.
func (c *Coordinator) term(ctx context.Context, cli *clientv3.Client, keys etcdx.Keys) (*Summary, error) {
	cfg := &c.cfg
	var leader *etcdx.Leader
	var sess *concurrency.Session
	// Bounded: a coordinator stopping while etcd does not answer leaves
	// its lease to expire rather than wait a TTL to revoke it.
	defer func() { etcdx.CloseSession(sess, time.Second) }()
	for leader == nil {
		var err error
		if sess, err = etcdx.NewSession(ctx, cli, cfg.TTL); err != nil {
			sess = nil
			return nil, err
		}
		cfg.Logf("campaigning for job %s", cfg.Job)
		leader, err = etcdx.Campaign(ctx, sess, keys, cfg.Name)
		if err != nil {
			if ctx.Err() != nil || !errors.Is(err, etcdx.ErrSessionExpired) {
				return nil, err
			}
			// Starved or cut off from etcd longer than the TTL while
			// waiting: nobody is hurt by campaigning anew.
			cfg.Logf("%v; campaigning again under a new session", err)
			etcdx.CloseSession(sess, time.Second)
		}
	}
	defer func() {
		rctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		leader.Resign(rctx)
	}()
	cfg.Metrics.Leading(leader.Rev())
	defer cfg.Metrics.NotLeading()
	cfg.Logf("leading job %s with fencing token %d", cfg.Job, leader.Rev())
	// Orders stop the moment leadership is lost: everything below runs
	// under a context that ends with the session.
	lctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	go func() {
		select {
		case <-leader.Done():
			cancel(etcdx.ErrDeposed)
		case <-lctx.Done():
		}
	}()
	sum, err := c.lead(lctx, leader)
	if cause := context.Cause(lctx); err != nil && errors.Is(cause, etcdx.ErrDeposed) {
		err = fmt.Errorf("coordinator: job %s: lost leadership: %w", cfg.Job, errors.Join(err, etcdx.ErrDeposed))
	}
	return sum, err
}

func (c *Coordinator) lead(ctx context.Context, leader *etcdx.Leader) (*Summary, error) {
	cfg := &c.cfg
	began := time.Now()
	keys := leader.Keys()
	base := cfg.initStep()
	committer, err := etcdx.NewCommitterAfter(ctx, leader, base)
	if err != nil {
		return nil, err
	}
	if err := checkResumable(committer.Last(), cfg); err != nil {
		return nil, err
	}
	epoch, err := nextEpoch(ctx, leader.Client(), keys)
	if err != nil {
		return nil, err
	}
	cfg.Logf("waiting for %d workers", cfg.Workers)
	wctx, wcancel := context.WithTimeout(ctx, cfg.WaitTimeout)
	members, err := etcdx.WaitMembers(wctx, leader.Client(), keys, cfg.Workers)
	wcancel()
	if err != nil {
		return nil, err
	}
	fam, err := family(cfg)
	if err != nil {
		return nil, err
	}
	plan, members, layout, err := buildPlan(cfg, members, epoch)
	if err != nil {
		return nil, err
	}
	r := &run{cfg: cfg, fam: fam, leader: leader, committer: committer, conns: map[string]*workerConn{},
		suspect: map[string]int64{}, planHashes: map[int64]string{}, ctxLen: cfg.Train.Model.Ctx}
	defer r.closeWorkers()
	dir, err := corpusDir(cfg)
	if err != nil {
		return nil, fmt.Errorf("coordinator: %w", err)
	}
	corpus, err := data.Load(dir, data.Options{MaxBytes: cfg.MaxCorpusBytes})
	if err != nil {
		return nil, fmt.Errorf("coordinator: %w", err)
	}
	// The same sampler, seed and draw order as the single-process trainer
	// (model/train), so a GPipe run sees exactly its windows.
	r.sampler = data.NewSampler(corpus.Train, cfg.Train.Model.Seed)
	r.initialData = r.sampler.State()
	for _, ws := range plan.StageWorkers() {
		r.stageSizes = append(r.stageSizes, len(ws))
	}
	// Every worker starts from the seed: one that served a previous
	// leader of this job holds its (possibly uncommitted) state. A job
	// with committed steps restarts from its newest usable checkpoint
	// and replays the committed steps after it.
	first := base + 1
	if committer.Last().Step > base {
		n, err := r.newestListedStep(ctx)
		if err != nil {
			return nil, err
		}
		first = max(n, base) + 1
	}
	// The plan in force until install succeeds (recover reads it).
	r.plan = plan
	for i, m := range members {
		r.workers = append(r.workers, &workerConn{idx: i, member: m})
	}
	err = r.install(ctx, plan, members, layout, true)
	if err == nil && (committer.Last().Step > base || cfg.InitFrom != nil) {
		var ck *CheckpointManifest
		if ck, err = r.restoreNewest(ctx); err == nil {
			first = 1
			switch {
			case ck == nil:
			case ck == r.init:
				first = ck.Step + 1
				cfg.Logf("job %s starts from %s (step %d)", cfg.Job, cfg.InitFrom.Path, ck.Step)
			default:
				first = ck.Step + 1
				cfg.Logf("resumed job %s from the checkpoint of step %d", cfg.Job, ck.Step)
			}
		}
	}
	if err != nil {
		// A registered worker may be dead with its lease still running
		// (a failover right after a worker loss): recover as from any
		// failed step. Survivors hold step first-1 only if the restore
		// succeeded, which is what recover checks before re-pathing.
		if !errRetryable(ctx, err) {
			return nil, err
		}
		if first, err = r.recover(ctx, first, err); err != nil {
			return nil, err
		}
	}
	if last := committer.Last().Step; last > base {
		// A leader taking over a job with committed steps.
		cfg.Metrics.Recovered(metrics.RecoveryLeaderResume)
		r.recordTakeover(ctx, began, first, last)
		if last >= first {
			cfg.Logf("replaying committed steps %d..%d", first, last)
		}
	}
	cfg.Metrics.SetEpoch(r.fence.Epoch)
	cfg.Logf("epoch %d: %s over %d workers, %d stages, %d parameters", epoch, plan.Schedule, len(plan.Workers), len(plan.Stages), r.params)
	start := time.Now()
	var reports []StepReport
	var tokens int64
	tc := cfg.Train
	ectx := r.armWatch(ctx)
	defer func() { r.stopWatch(nil) }()
	for step := first; step <= int64(cfg.Steps); {
		if changed, err := r.maybeRejoin(ectx, step); err != nil {
			if !errRetryable(ctx, err) {
				return nil, err
			}
			cfg.Logf("rejoin before step %d failed: %v", step, err)
			if step, err = r.recover(ctx, step, err); err != nil {
				return nil, err
			}
			ectx = r.armWatch(ctx)
			continue
		} else if changed {
			ectx = r.armWatch(ctx)
		}
		pos := r.sampler.State()
		rep, err := r.iterate(ectx, step)
		if err != nil {
			if cause := context.Cause(ectx); cause != nil && !errors.Is(cause, context.Canceled) {
				err = fmt.Errorf("%w: %w", cause, err)
			}
			if !errRetryable(ctx, err) {
				return nil, err
			}
			// The retry draws the same windows.
			if serr := r.sampler.SetState(pos); serr != nil {
				return nil, serr
			}
			if step, err = r.recover(ctx, step, err); err != nil {
				return nil, err
			}
			ectx = r.armWatch(ctx)
			continue
		}
		if rep.Replayed {
			step++
			continue
		}
		r.failures = 0
		r.notifyRecovered(ctx)
		tokens += int64(tc.Microbatches * tc.MicrobatchSize * r.ctxLen)
		rep.Tokens = tokens
		epochBefore := r.fence.Epoch
		if err := r.maybeReplan(ectx, step); err != nil {
			return nil, err
		}
		if r.fence.Epoch != epochBefore {
			cfg.Metrics.Recovered(metrics.RecoveryReplanDrift)
			cfg.Metrics.SetEpoch(r.fence.Epoch)
		}
		reports = append(reports, rep)
		if cfg.OnStep != nil {
			cfg.OnStep(rep)
		}
		step++
	}
	r.notifyRecovered(ctx)
	sum := &Summary{Job: cfg.Job, Schedule: r.plan.Schedule, Workers: len(r.plan.Workers), Stages: len(r.plan.Stages),
		Microbatches: tc.Microbatches, MicrobatchSize: tc.MicrobatchSize, Params: r.params, Epoch: r.fence.Epoch,
		LeaderRev: leader.Rev(), PlanPath: r.planPath, PlanSHA256: r.planHash, Steps: reports, ElapsedS: time.Since(start).Seconds()}
	sum.Checkpoint = r.lastCheckpoint
	sum.Recoveries = r.recoveries
	sum.finish(r.stats, cfg.Simulator)
	r.finishReplans(sum)
	return sum, nil
}

// notifyRecovered stamps the recoveries waiting for a commit and reports
// them.
func (r *run) notifyRecovered(ctx context.Context) {
	now := time.Now()
	for _, i := range r.pendingCommit {
		rec := &r.recoveries[i]
		if rec.CommittedAt.IsZero() {
			rec.CommittedAt = now
			rec.ToCommitS = now.Sub(rec.DetectedAt).Seconds()
		}
		r.cfg.Metrics.Recovered(rec.Kind)
		r.record(ctx, *rec)
		if r.cfg.OnRecovery != nil {
			r.cfg.OnRecovery(*rec)
		}
	}
	r.pendingCommit = r.pendingCommit[:0]
}

func corpusDir(cfg *Config) (string, error) {
	if cfg.CorpusDir != "" {
		return cfg.CorpusDir, nil
	}
	return data.DefaultCorpusDir()
}

// nextEpoch is one above the highest plan epoch recorded for the job
// (etcdx.LastPlanEpoch: from the keys, so a forged manifest cannot stop
// or steer the numbering).
func nextEpoch(ctx context.Context, cli *clientv3.Client, k etcdx.Keys) (int64, error) {
	last, err := etcdx.LastPlanEpoch(ctx, cli, k)
	if err != nil {
		return 0, fmt.Errorf("coordinator: %w", err)
	}
	if last >= etcdx.MaxEpoch {
		return 0, fmt.Errorf("coordinator: job %s has used every plan epoch up to %d", k.Job(), int64(etcdx.MaxEpoch))
	}
	return last + 1, nil
}

func (r *run) closeWorkers() {
	for _, w := range r.conns {
		if w.close != nil {
			w.close()
		}
	}
}

// fanOut calls f on every worker concurrently, each under the RPC
// timeout. The first failure cancels the others (a worker waiting for a
// lost peer's tensors would otherwise wait for the whole timeout); the
// error names the first failure, then the others by worker index.
func (r *run) fanOut(ctx context.Context, what string, f func(ctx context.Context, w *workerConn) error) error {
	errs := make([]error, len(r.workers))
	fctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var first atomic.Int32
	first.Store(-1)
	var wg sync.WaitGroup
	for i, w := range r.workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cctx, ccancel := context.WithTimeout(fctx, r.cfg.RPCTimeout)
			defer ccancel()
			if err := f(cctx, w); err != nil {
				errs[i] = fmt.Errorf("coordinator: %s on worker %d (%s at %s): %w", what, w.idx, w.member.Name, w.member.Addr, err)
				if first.CompareAndSwap(-1, int32(i)) {
					cancel()
				}
			}
		}()
	}
	wg.Wait()
	if i := first.Load(); i >= 0 {
		rest := append([]error{errs[i]}, errs[:i]...)
		return errors.Join(append(rest, errs[i+1:]...)...)
	}
	return nil
}

// configure hands every worker the plan and the model, and returns the
// model's parameter count (the sum over the workers of replica 0).
func (r *run) configure(ctx context.Context, planJSON []byte, tc model.TrainConfig) (int64, error) {
	return r.configureWith(ctx, planJSON, tc, false)
}

// configureWith is configure; fresh makes every worker rebuild its shards
// from the seed (Configure{fresh}).
func (r *run) configureWith(ctx context.Context, planJSON []byte, tc model.TrainConfig, fresh bool) (int64, error) {
	// The worker reads the train config with the backend name beside it.
	modelJSON, err := json.Marshal(struct {
		model.TrainConfig
		Backend string `json:"backend,omitempty"`
	}{tc, r.cfg.Backend})
	if err != nil {
		return 0, err
	}
	peers, names := make([]string, len(r.workers)), make([]string, len(r.workers))
	for i, w := range r.workers {
		peers[i], names[i] = w.member.Addr, w.member.Name
	}
	counts := make([]int64, len(r.workers))
	err = r.fanOut(ctx, "Configure", func(ctx context.Context, w *workerConn) error {
		resp, err := w.cli.Configure(ctx, &pb.ConfigureRequest{Fence: r.fence, PlanJson: planJSON, Worker: int32(w.idx),
			Peers: peers, ModelJson: modelJSON, Seed: int64(tc.Model.Seed), LinkShapingYaml: r.cfg.Cluster, Fresh: fresh, PeerNames: names})
		if err == nil {
			counts[w.idx] = resp.NumParams
		}
		return err
	})
	var n int64
	for i, c := range counts {
		if r.plan.Workers[i].Replica == 0 {
			n += c
		}
	}
	return n, err
}

// checkResumable refuses a job whose steps are all committed. A job with
// committed steps resumes from its newest usable listed checkpoint (or,
// with none, from the seed), replaying the committed steps after it
// without committing them again (restoreNewest).
func checkResumable(last etcdx.Commit, cfg *Config) error {
	if last.Step >= int64(cfg.Steps) {
		return fmt.Errorf("%w: job %s already committed step %d of %d; nothing to resume (use a new job id)", ErrJobFinished, cfg.Job, last.Step, cfg.Steps)
	}
	return nil
}

// ErrWorkerLost means a plan worker's registration vanished (its lease
// expired or it deregistered) during the run.
var ErrWorkerLost = errors.New("coordinator: worker lost")
