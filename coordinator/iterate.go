package coordinator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"sort"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"stagecoach/internal/etcdx"
	"stagecoach/model"
	pb "stagecoach/proto"
)

// StepReport is one committed optimizer step.
type StepReport struct {
	Step       int64   `json:"step"`
	Loss       float64 `json:"loss"`
	GradNorm   float64 `json:"grad_norm"`
	LR         float64 `json:"lr"`
	Tokens     int64   `json:"tokens"`
	TokensPerS float64 `json:"tokens_per_s"`
	// IterationS is the wall time of the whole step as the coordinator
	// saw it: drawing data, RunIteration, Step and the etcd commit.
	IterationS float64 `json:"iteration_s"`
	// ComputeS is the wall time of the RunIteration fan-out (the
	// workers' programs) and StepS that of the Step fan-out (the
	// optimizer update on every worker).
	ComputeS float64 `json:"compute_s"`
	StepS    float64 `json:"step_s"`
	// CheckpointS is the workers' checkpoint save, on checkpoint steps.
	CheckpointS float64 `json:"checkpoint_s,omitempty"`
	// CommitS is the fenced etcd commit of the step.
	CommitS float64 `json:"commit_s"`
	// ControlS is the coordinator and control-plane time: IterationS
	// minus ComputeS, StepS and CheckpointS (drawing data, the norm, RPC
	// overheads outside the fan-outs, the commit).
	ControlS float64 `json:"control_s"`
	// Timeline is the step's actions as the workers timed them (for the
	// live page; not in the JSON lines).
	Timeline []TimedAction `json:"-"`
	// Replayed marks a step re-run after a restore: it was committed
	// before, so it is not committed (or reported) again.
	Replayed bool `json:"-"`
}

// iterate runs optimizer step `step` (1-based): it draws the windows of
// every microbatch, runs every worker's program, computes the global
// gradient norm and the learning rate, steps every worker and commits the
// step in etcd. A failure before Step leaves every worker's parameters
// untouched; the step is committed only after every worker applied it.
func (r *run) iterate(ctx context.Context, step int64) (StepReport, error) {
	t0 := r.cfg.clock().Now()
	r.stepping = false
	tc := r.cfg.Train
	r.cfg.Metrics.SetEpoch(r.fence.Epoch)
	perWorker, err := r.drawData()
	if err != nil {
		return StepReport{}, err
	}
	resps := make([]*pb.RunIterationResponse, len(r.workers))
	tRun := r.cfg.clock().Now()
	err = r.fanOut(ctx, fmt.Sprintf("RunIteration %d", step), func(ctx context.Context, w *workerConn) error {
		resp, err := w.cli.RunIteration(ctx, &pb.RunIterationRequest{Fence: r.fence, Iteration: step, Data: perWorker[w.idx]})
		resps[w.idx] = resp
		return err
	})
	runS := since(r.cfg.clock(), tRun).Seconds()
	if err != nil {
		return StepReport{}, err
	}
	loss, err := r.meanLoss(resps)
	if err != nil {
		return StepReport{}, fmt.Errorf("coordinator: step %d: %w", step, err)
	}
	norm, err := r.gradNorm(resps)
	if err != nil {
		return StepReport{}, fmt.Errorf("coordinator: step %d: %w", step, err)
	}
	if math.IsNaN(norm) || math.IsInf(norm, 0) {
		return StepReport{}, fmt.Errorf("%w: coordinator: step %d: gradient norm is %v; lower the learning rate", errNotDeterministic, step, norm)
	}
	clip := model.ClipFactor(norm, tc.Optim.ClipNorm)
	lr := tc.Optim.LRAt(int(step))
	tStep := r.cfg.clock().Now()
	// From here a failure may leave some workers stepped and others not:
	// recovery then restores every shard (see recover.go).
	r.stepping = true
	err = r.fanOut(ctx, fmt.Sprintf("Step %d", step), func(ctx context.Context, w *workerConn) error {
		resp, err := w.cli.Step(ctx, &pb.StepRequest{Fence: r.fence, Iteration: step, ClipScale: float64(clip), Lr: lr})
		if err == nil && resp.AppliedStep != step {
			err = fmt.Errorf("worker reports applied step %d, want %d", resp.AppliedStep, step)
		}
		return err
	})
	if err != nil {
		// Some workers may have stepped and others not: the shards no
		// longer form one model. The step is not committed and recovery
		// reloads every shard from the last checkpoint.
		return StepReport{}, fmt.Errorf("%w (step %d not committed; the workers' shards may disagree)", err, step)
	}
	stepS := since(r.cfg.clock(), tStep).Seconds()
	if step <= r.committer.Last().Step {
		// A replay after a restore: the step is committed already.
		if err := r.checkReplay(ctx, step, loss); err != nil {
			return StepReport{}, fmt.Errorf("%w: %w", errNotDeterministic, err)
		}
		return StepReport{Step: step, Loss: loss, Replayed: true}, nil
	}
	var extra []clientv3.Op
	var ckpt *CheckpointManifest
	tCkpt := r.cfg.clock().Now()
	if r.wantCheckpoint(step) {
		if ckpt, err = r.saveCheckpoint(ctx, step); err != nil {
			return StepReport{}, fmt.Errorf("%w (step %d not committed)", err, step)
		}
		b, err := json.Marshal(ckpt)
		if err != nil {
			return StepReport{}, err
		}
		extra = append(extra, clientv3.OpPut(r.leader.Keys().Checkpoint(step), string(b)))
		ops, dirs, err := r.retire(ctx, step)
		if err != nil {
			return StepReport{}, err
		}
		extra = append(extra, ops...)
		defer func() {
			if r.committer.Last().Step == step {
				r.removeRetired(dirs)
			}
		}()
	}
	ckptS := since(r.cfg.clock(), tCkpt).Seconds()
	tCommit := r.cfg.clock().Now()
	if err := r.commit(ctx, etcdx.Commit{Step: step, Epoch: r.fence.Epoch, Loss: loss}, extra...); err != nil {
		return StepReport{}, err
	}
	if ckpt != nil {
		r.lastCheckpoint, r.ckptStep = ckpt.Dir, step
		r.writeManifest(ckpt)
	}
	commitS := since(r.cfg.clock(), tCommit).Seconds()
	r.stats.add(step, resps)
	wall := since(r.cfg.clock(), t0)
	it := wall.Seconds()
	tokens := float64(tc.Microbatches * tc.MicrobatchSize * r.ctxLen)
	r.cfg.Metrics.StepCommitted(step, wall, int64(tokens), loss)
	return StepReport{Step: step, Loss: loss, GradNorm: norm, LR: lr, TokensPerS: tokens / it,
		IterationS: it, ComputeS: runS, StepS: stepS, CheckpointS: ckptS, CommitS: commitS, ControlS: it - runS - stepS - ckptS,
		Timeline: r.timeline()}, nil
}

// drawData draws every microbatch's windows in microbatch order, exactly
// as the single-process trainer does, and gives each worker the
// microbatches it embeds (first hop) or computes the loss of.
func (r *run) drawData() ([][]*pb.MicrobatchData, error) {
	tc := r.cfg.Train
	out := make([][]*pb.MicrobatchData, len(r.workers))
	for mb, m := range r.plan.Microbatches {
		win := make([]int32, m.Samples*(r.ctxLen+1))
		if err := r.sampler.Fill(win, r.ctxLen+1); err != nil {
			return nil, fmt.Errorf("coordinator: draw microbatch %d: %w", mb, err)
		}
		d := &pb.MicrobatchData{Microbatch: int32(mb), Batch: int32(m.Samples), Ctx: int32(tc.Model.Ctx), Tokens: win}
		first := m.Path[0].Worker
		out[first] = append(out[first], d)
		if m.LossWorker != first {
			out[m.LossWorker] = append(out[m.LossWorker], d)
		}
	}
	return out, nil
}

// meanLoss is the mean of the microbatch losses summed in ascending
// microbatch order (the reference trainer's order). Every microbatch must
// be reported exactly once, by its loss worker.
func (r *run) meanLoss(resps []*pb.RunIterationResponse) (float64, error) {
	m := len(r.plan.Microbatches)
	losses := make([]float64, m)
	seen := make([]bool, m)
	for w, resp := range resps {
		for mb, l := range resp.GetLosses() {
			if mb < 0 || int(mb) >= m {
				return 0, fmt.Errorf("worker %d reports a loss for microbatch %d of %d", w, mb, m)
			}
			if r.plan.Microbatches[mb].LossWorker != w {
				return 0, fmt.Errorf("worker %d reports the loss of microbatch %d, whose loss worker is %d", w, mb, r.plan.Microbatches[mb].LossWorker)
			}
			losses[mb], seen[mb] = l, true
		}
	}
	var total float64
	for mb := range losses {
		if !seen[mb] {
			return 0, fmt.Errorf("no loss reported for microbatch %d", mb)
		}
		total += losses[mb]
	}
	return total / float64(m), nil
}

// gradNorm is the global gradient norm: per-tensor sums of squares summed
// in ascending canonical tensor index, as model.GlobalGradNorm does, so
// the clip scale matches the reference bit for bit. Workers that report
// no per-tensor sums fall back to their single partial sum, in worker
// order (correct, but not bit-identical).
func (r *run) gradNorm(resps []*pb.RunIterationResponse) (float64, error) {
	per := map[int32]float64{}
	from := map[int32]int{}
	var partial float64
	perTensor := false
	for w, resp := range resps {
		if len(resp.GetTensorSumSquares()) == 0 {
			partial += resp.GetGradSumSquares()
			continue
		}
		perTensor = true
		for idx, s := range resp.GetTensorSumSquares() {
			if prev, dup := from[idx]; dup {
				return 0, fmt.Errorf("tensor %d's gradient reported by workers %d and %d", idx, prev, w)
			}
			per[idx], from[idx] = s, w
		}
	}
	if !perTensor {
		return math.Sqrt(partial), nil
	}
	idx := make([]int32, 0, len(per))
	for i := range per {
		idx = append(idx, i)
	}
	sort.Slice(idx, func(a, b int) bool { return idx[a] < idx[b] })
	var s float64
	for _, i := range idx {
		s += per[i]
	}
	return math.Sqrt(s + partial), nil
}

// commit commits c, retrying while etcd is failing over. Every worker has
// applied the step, so giving up here would throw a good step away. An
// attempt that fails may still have landed (a timeout loses the answer,
// not the proposal), so before each retry the committed iteration is read
// back: if it is this very commit (same step, epoch and leader), it is
// done. Attempts are bounded by a TTL each and by 3 TTLs in all.
func (r *run) commit(ctx context.Context, c etcdx.Commit, extra ...clientv3.Op) error {
	ttl := time.Duration(r.cfg.TTL) * time.Second
	deadline := r.cfg.clock().Now().Add(3 * ttl)
	for {
		actx, cancel := context.WithTimeout(ctx, ttl)
		err := r.committer.Commit(actx, c, extra...)
		cancel()
		if err == nil || ctx.Err() != nil || errors.Is(err, etcdx.ErrDeposed) || r.cfg.clock().Now().After(deadline) {
			return err
		}
		rctx, cancel := context.WithTimeout(ctx, ttl)
		rerr := r.committer.Refresh(rctx)
		cancel()
		if rerr == nil {
			last := r.committer.Last()
			if last.Step == c.Step && last.Epoch == c.Epoch && last.LeaderRev == r.leader.Rev() {
				return nil
			}
			if last.Step >= c.Step {
				return fmt.Errorf("%w: step %d was committed by epoch %d under token %d meanwhile", err, c.Step, last.Epoch, last.LeaderRev)
			}
		}
		r.cfg.Logf("commit of step %d failed (%v); retrying", c.Step, err)
		select {
		case <-ctx.Done():
			return err
		case <-r.cfg.clock().After(200 * time.Millisecond):
		}
	}
}
