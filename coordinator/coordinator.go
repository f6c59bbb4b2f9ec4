package coordinator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"stagecoach/data"
	"stagecoach/internal/etcdx"
	"stagecoach/model"
	pb "stagecoach/proto"
	"stagecoach/scheduler"
)

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
}

// Run campaigns for the job, waits for the workers, trains cfg.Steps steps
// and returns the run summary. It refuses a job id whose etcd state
// already holds committed steps: resuming is not implemented, and silently
// starting over would apply steps twice.
func (c *Coordinator) Run(ctx context.Context) (*Summary, error) {
	cfg := &c.cfg
	cli, err := etcdx.Dial(ctx, cfg.Endpoints, 0)
	if err != nil {
		return nil, err
	}
	defer cli.Close()
	keys, err := etcdx.NewKeys(cfg.Job)
	if err != nil {
		return nil, err
	}
	sess, err := etcdx.NewSession(ctx, cli, cfg.TTL)
	if err != nil {
		return nil, err
	}
	defer sess.Close()
	cfg.Logf("campaigning for job %s", cfg.Job)
	leader, err := etcdx.Campaign(ctx, sess, keys, cfg.Name)
	if err != nil {
		return nil, err
	}
	defer func() {
		rctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		leader.Resign(rctx)
	}()
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
		err = fmt.Errorf("coordinator: job %s: lost leadership: %w", cfg.Job, err)
	}
	return sum, err
}

func (c *Coordinator) lead(ctx context.Context, leader *etcdx.Leader) (*Summary, error) {
	cfg := &c.cfg
	keys := leader.Keys()
	committer, err := etcdx.NewCommitter(ctx, leader)
	if err != nil {
		return nil, err
	}
	resume, err := resumePoint(ctx, leader, committer.Last(), cfg)
	if err != nil {
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
	plan, members, layout, err := buildPlan(cfg, members, epoch)
	if err != nil {
		return nil, err
	}
	planJSON, planPath, planHash, err := storePlan(cfg.OutDir, plan)
	if err != nil {
		return nil, err
	}
	man := PlanManifest{Epoch: epoch, Schedule: plan.Schedule, SHA256: planHash, Bytes: len(planJSON), Path: planPath, LeaderRev: leader.Rev()}
	for i, w := range plan.Workers {
		man.Workers = append(man.Workers, PlanWorker{Name: members[i].Name, Addr: members[i].Addr, Stages: w.Stages, Replica: w.Replica})
	}
	if err := leader.PutJSON(ctx, keys.Plan(epoch), man); err != nil {
		return nil, err
	}
	// A plan worker whose lease lapses is gone: stop at once with a clear
	// error instead of waiting for an RPC to time out. (Replanning onto
	// the remaining workers is not implemented yet.)
	ctx, stopWatch := context.WithCancelCause(ctx)
	defer stopWatch(nil)
	go watchPlanMembers(ctx, leader, members, stopWatch)
	r := &run{cfg: cfg, leader: leader, committer: committer, plan: plan,
		fence: &pb.Fence{Job: cfg.Job, LeaderRev: leader.Rev(), Epoch: epoch}, ctxLen: cfg.Train.Model.Ctx}
	defer r.closeWorkers()
	for i, m := range members {
		wc, closeFn, err := cfg.Dial(ctx, m.Addr)
		if err != nil {
			return nil, err
		}
		r.workers = append(r.workers, &workerConn{idx: i, member: m, cli: wc, close: closeFn})
	}
	tc := cfg.Train
	tc.Stages = len(plan.Stages)
	tc.Layout = layout
	params, err := r.configure(ctx, planJSON, tc)
	if err != nil {
		return nil, err
	}
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
	r.sampler = data.NewSampler(corpus.Train, tc.Model.Seed)
	first := int64(1)
	if resume != nil {
		if err := r.restore(ctx, resume); err != nil {
			return nil, err
		}
		first = resume.Step + 1
		cfg.Logf("resumed job %s from the checkpoint of step %d", cfg.Job, resume.Step)
	}
	r.stats = newMeasurements(plan, cfg.Steps)
	if err := r.startReplanner(); err != nil {
		return nil, err
	}
	cfg.Logf("epoch %d: %s over %d workers, %d stages, %d parameters", epoch, plan.Schedule, len(plan.Workers), len(plan.Stages), params)
	start := time.Now()
	var reports []StepReport
	var tokens int64
	for step := first; step <= int64(cfg.Steps); step++ {
		rep, err := r.iterate(ctx, step)
		if err != nil {
			if cause := context.Cause(ctx); cause != nil && !errors.Is(cause, context.Canceled) {
				err = fmt.Errorf("%w: %w", cause, err)
			}
			return nil, err
		}
		tokens += int64(tc.Microbatches * tc.MicrobatchSize * r.ctxLen)
		rep.Tokens = tokens
		if err := r.maybeReplan(ctx, step); err != nil {
			return nil, err
		}
		reports = append(reports, rep)
		if cfg.OnStep != nil {
			cfg.OnStep(rep)
		}
	}
	sum := &Summary{Job: cfg.Job, Schedule: plan.Schedule, Workers: len(plan.Workers), Stages: len(plan.Stages),
		Microbatches: tc.Microbatches, MicrobatchSize: tc.MicrobatchSize, Params: params, Epoch: epoch,
		LeaderRev: leader.Rev(), PlanPath: planPath, PlanSHA256: planHash, Steps: reports, ElapsedS: time.Since(start).Seconds()}
	sum.Checkpoint = r.lastCheckpoint
	sum.finish(r.stats)
	r.finishReplans(sum)
	return sum, nil
}

func corpusDir(cfg *Config) (string, error) {
	if cfg.CorpusDir != "" {
		return cfg.CorpusDir, nil
	}
	return data.DefaultCorpusDir()
}

// nextEpoch is one above the highest plan epoch recorded for the job.
func nextEpoch(ctx context.Context, cli *clientv3.Client, k etcdx.Keys) (int64, error) {
	resp, err := cli.Get(ctx, k.PlanPrefix(), clientv3.WithLastKey()...)
	if err != nil {
		return 0, fmt.Errorf("coordinator: read plan epochs: %w", err)
	}
	if len(resp.Kvs) == 0 {
		return 1, nil
	}
	var m PlanManifest
	if err := json.Unmarshal(resp.Kvs[0].Value, &m); err != nil {
		return 0, fmt.Errorf("coordinator: %s: %w", resp.Kvs[0].Key, err)
	}
	return m.Epoch + 1, nil
}

func (r *run) closeWorkers() {
	for _, w := range r.workers {
		if w.close != nil {
			w.close()
		}
	}
}

// fanOut calls f on every worker concurrently, each under the RPC
// timeout, and returns the first error (by worker index, so the message
// is deterministic) after all have returned.
func (r *run) fanOut(ctx context.Context, what string, f func(ctx context.Context, w *workerConn) error) error {
	errs := make([]error, len(r.workers))
	var wg sync.WaitGroup
	for i, w := range r.workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cctx, cancel := context.WithTimeout(ctx, r.cfg.RPCTimeout)
			defer cancel()
			if err := f(cctx, w); err != nil {
				errs[i] = fmt.Errorf("coordinator: %s on worker %d (%s at %s): %w", what, w.idx, w.member.Name, w.member.Addr, err)
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// configure hands every worker the plan and the model, and returns the
// model's parameter count (the sum over the workers of replica 0).
func (r *run) configure(ctx context.Context, planJSON []byte, tc model.TrainConfig) (int64, error) {
	modelJSON, err := json.Marshal(tc)
	if err != nil {
		return 0, err
	}
	peers := make([]string, len(r.workers))
	for i, w := range r.workers {
		peers[i] = w.member.Addr
	}
	counts := make([]int64, len(r.workers))
	err = r.fanOut(ctx, "Configure", func(ctx context.Context, w *workerConn) error {
		resp, err := w.cli.Configure(ctx, &pb.ConfigureRequest{Fence: r.fence, PlanJson: planJSON, Worker: int32(w.idx),
			Peers: peers, ModelJson: modelJSON, Seed: int64(tc.Model.Seed), LinkShapingYaml: r.cfg.Cluster})
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

// CheckpointManifest is what etcd lists about a checkpoint. It is put in
// the same transaction as its step's commit, after every worker has
// written and synced its files, so etcd never lists a checkpoint of an
// uncommitted step or one whose files are missing.
type CheckpointManifest struct {
	Step  int64 `json:"step"`
	Epoch int64 `json:"epoch"`
	// Base is the directory handed to the workers; Dir the step's own.
	Base  string   `json:"base"`
	Dir   string   `json:"dir"`
	Files []string `json:"files"`
	// DataPosition is the sampler state after the step's windows, so a
	// resumed run draws exactly the windows an uninterrupted one would.
	DataPosition string `json:"data_position"`
}

func (r *run) wantCheckpoint(step int64) bool {
	c := r.cfg
	return c.Checkpoint && step == int64(c.Steps) || c.CheckpointEvery > 0 && step%int64(c.CheckpointEvery) == 0
}

// saveCheckpoint asks every worker to save its shards after step.
func (r *run) saveCheckpoint(ctx context.Context, step int64) (*CheckpointManifest, error) {
	// Workers put each step in its own subdirectory of base.
	base, err := filepath.Abs(filepath.Join(r.cfg.OutDir, "checkpoints"))
	if err != nil {
		return nil, err
	}
	files := make([][]string, len(r.workers))
	err = r.fanOut(ctx, fmt.Sprintf("SaveCheckpoint %d", step), func(ctx context.Context, w *workerConn) error {
		resp, err := w.cli.SaveCheckpoint(ctx, &pb.CheckpointRequest{Fence: r.fence, Dir: base, Step: step})
		if err == nil {
			files[w.idx] = resp.Files
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	m := &CheckpointManifest{Step: step, Epoch: r.fence.Epoch, Base: base, Dir: base, DataPosition: r.sampler.State()}
	for _, f := range files {
		m.Files = append(m.Files, f...)
	}
	if len(m.Files) > 0 {
		m.Dir = filepath.Dir(m.Files[0])
	}
	return m, nil
}

// resumePoint decides where a job starts: nil for a new job, the
// checkpoint committed with the last step for a job that already ran.
func resumePoint(ctx context.Context, leader *etcdx.Leader, last etcdx.Commit, cfg *Config) (*CheckpointManifest, error) {
	if last.Step == 0 {
		return nil, nil
	}
	if last.Step >= int64(cfg.Steps) {
		return nil, fmt.Errorf("coordinator: job %s already committed step %d of %d; nothing to resume (use a new job id)", cfg.Job, last.Step, cfg.Steps)
	}
	var m CheckpointManifest
	found, err := etcdx.GetJSON(ctx, leader.Client(), leader.Keys().Checkpoint(last.Step), &m)
	if err != nil {
		return nil, err
	}
	if !found {
		return nil, fmt.Errorf("coordinator: job %s already committed step %d without a checkpoint of it, so it cannot resume exactly (checkpoint every step, or use a new job id)", cfg.Job, last.Step)
	}
	return &m, nil
}

// restore loads the checkpoint into every worker and rewinds the sampler.
func (r *run) restore(ctx context.Context, m *CheckpointManifest) error {
	if err := r.sampler.SetState(m.DataPosition); err != nil {
		return fmt.Errorf("coordinator: checkpoint of step %d: %w", m.Step, err)
	}
	return r.fanOut(ctx, fmt.Sprintf("LoadCheckpoint %d", m.Step), func(ctx context.Context, w *workerConn) error {
		_, err := w.cli.LoadCheckpoint(ctx, &pb.CheckpointRequest{Fence: r.fence, Dir: m.Base, Step: m.Step})
		return err
	})
}

// ErrWorkerLost means a plan worker's registration vanished (its lease
// expired or it deregistered) during the run.
var ErrWorkerLost = errors.New("coordinator: worker lost")

// watchPlanMembers cancels ctx with ErrWorkerLost when a plan worker's
// registration disappears or is replaced by another lease (a restart under
// the same name holds none of the run's state).
func watchPlanMembers(ctx context.Context, leader *etcdx.Leader, plan []etcdx.Member, cancel context.CancelCauseFunc) {
	for ms := range etcdx.WatchMembers(ctx, leader.Client(), leader.Keys()) {
		cur := map[string]etcdx.Member{}
		for _, m := range ms {
			cur[m.Name] = m
		}
		for i, m := range plan {
			if c, ok := cur[m.Name]; !ok || c.Lease != m.Lease || c.Addr != m.Addr {
				cancel(fmt.Errorf("%w: plan worker %d (%s at %s) left the job", ErrWorkerLost, i, m.Name, m.Addr))
				return
			}
		}
	}
}
