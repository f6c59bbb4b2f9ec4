package worker

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"path"
	"sort"

	"stagecoach/costmodel"
	"stagecoach/internal/metrics"
	"stagecoach/internal/naming"
	"stagecoach/internal/tlsx"
	"stagecoach/internal/transport"
	"stagecoach/model"
	pb "stagecoach/proto"
	"stagecoach/scheduler"
)

// job is what Configure builds: the plan, this worker's place in it and
// the shards it holds. Only the control goroutine touches it after
// publication, except the read-only plan lookups used by receive
// goroutines.
type job struct {
	plan   *scheduler.Plan
	ix     *scheduler.Index
	me     int
	epoch  int64
	train  model.TrainConfig
	stages []*stage // held stages, ascending
	by     map[int]*stage
	out    *transport.Outbox
	// names are the plan workers' names, by index (empty: not given,
	// only without TLS).
	names []string
	// ready is the iteration whose gradients are complete and not yet
	// stepped (0: none).
	ready int64
}

// stage is one held stage: its shard and optimizer.
type stage struct {
	id       int
	spec     model.ShardSpec
	shard    *model.Shard
	opt      *model.Optimizer
	replicas []int // workers holding the stage, replica order
	// visits is the number of microbatches whose path visits the stage,
	// over all replicas: the divisor of the gradient (see model.Shard's
	// exactness contract); local counts those visiting it here.
	visits, local int
	reduced       bool // gradients finished this iteration
	// ordered is set when the stage reduces in microbatch order
	// (ordered.go).
	ordered *orderedState
}

// ModelConfig is the JSON a coordinator sends as model_json. It is the
// subset of model.TrainConfig the worker needs, with the same field names,
// so a marshalled model.TrainConfig is accepted as is.
type ModelConfig struct {
	Model model.Config      `json:"model"`
	Optim model.OptimConfig `json:"optim"`
}

// decodeModelConfig decodes and validates model_json, refusing a model
// beyond lim before anything is allocated for it.
func decodeModelConfig(b []byte, lim model.Limits) (model.TrainConfig, error) {
	var tc model.TrainConfig
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&tc); err != nil {
		return tc, fmt.Errorf("%w: model_json: %v", ErrBadInput, err)
	}
	tc.Model = tc.Model.WithDefaults()
	tc.Optim = tc.Optim.WithDefaults()
	if err := tc.Model.Validate(); err != nil {
		return tc, fmt.Errorf("%w: %v", ErrBadInput, err)
	}
	if err := tc.Optim.Validate(); err != nil {
		return tc, fmt.Errorf("%w: %v", ErrBadInput, err)
	}
	if err := tc.Model.CheckLimits(lim, tc.MicrobatchSize); err != nil {
		return tc, fmt.Errorf("%w: model_json: %v", ErrBadInput, err)
	}
	return tc, nil
}

// configureSpec is what a Configure request asks for, decoded and checked
// (against the plan, the model limits and the link emulation) before
// anything is built for it.
type configureSpec struct {
	plan    *scheduler.Plan
	me      int
	train   model.TrainConfig
	shaper  transport.Shaper // nil: no link emulation
	cluster string           // the emulated cluster's name
	names   []string         // the plan workers' names (may be empty without TLS)
}

// decodeConfigure decodes a Configure request's plan, model and link
// shaping as the worker does, without side effects: every size that
// drives an allocation is checked against lim first.
func decodeConfigure(req *pb.ConfigureRequest, lim model.Limits, mutualTLS bool) (*configureSpec, error) {
	plan, err := scheduler.DecodeBytes(req.GetPlanJson())
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadInput, err)
	}
	me := int(req.GetWorker())
	if me < 0 || me >= len(plan.Workers) {
		return nil, fmt.Errorf("%w: worker %d outside the plan's 0..%d", ErrBadInput, me, len(plan.Workers)-1)
	}
	if len(req.GetPeers()) != len(plan.Workers) {
		return nil, fmt.Errorf("%w: %d peer addresses for %d plan workers", ErrBadInput, len(req.GetPeers()), len(plan.Workers))
	}
	names := req.GetPeerNames()
	switch {
	case len(names) == 0 && mutualTLS:
		return nil, fmt.Errorf("%w: no peer names: under mutual TLS the worker checks every tensor's sender against them", ErrBadInput)
	case len(names) != 0 && len(names) != len(plan.Workers):
		return nil, fmt.Errorf("%w: %d peer names for %d plan workers", ErrBadInput, len(names), len(plan.Workers))
	}
	for i, n := range names {
		if err := naming.Validate("worker name", n); err != nil {
			return nil, fmt.Errorf("%w: peer %d: %v", ErrBadInput, i, err)
		}
	}
	tc, err := decodeModelConfig(req.GetModelJson(), lim)
	if err != nil {
		return nil, err
	}
	samples := 1
	for _, mb := range plan.Microbatches {
		samples = max(samples, mb.Samples)
	}
	if err := tc.Model.CheckLimits(lim, samples); err != nil {
		return nil, fmt.Errorf("%w: model_json with the plan's %d samples per microbatch: %v", ErrBadInput, samples, err)
	}
	if req.GetSeed() != 0 {
		tc.Model.Seed = uint64(req.GetSeed())
	}
	if plan.Layers() != tc.Model.Layers {
		return nil, fmt.Errorf("%w: plan covers %d layers, model has %d", ErrBadInput, plan.Layers(), tc.Model.Layers)
	}
	spec := &configureSpec{plan: plan, me: me, train: tc, names: names}
	if y := req.GetLinkShapingYaml(); len(y) > 0 {
		c, err := costmodel.ParseCluster(y)
		if err != nil {
			return nil, fmt.Errorf("%w: link shaping: %v", ErrBadInput, err)
		}
		nodes := make([]string, len(plan.Workers))
		for w, wk := range plan.Workers {
			nodes[w] = wk.Node
		}
		if spec.shaper, err = transport.NewClusterShaper(c, nodes, me); err != nil {
			return nil, fmt.Errorf("%w: link shaping: %v", ErrBadInput, err)
		}
		spec.cluster = c.Name
	}
	return spec, nil
}

// Configure implements pb.WorkerServer.
func (s *Server) Configure(ctx context.Context, req *pb.ConfigureRequest) (*pb.ConfigureResponse, error) {
	resp, err := s.configure(ctx, req)
	if err != nil {
		s.cfg.Logf("worker %s: configure: %v", s.cfg.Name, err)
	}
	return resp, toStatus(err)
}

func (s *Server) configure(ctx context.Context, req *pb.ConfigureRequest) (*pb.ConfigureResponse, error) {
	s.control.Lock()
	defer s.control.Unlock()
	if err := s.admitLeader(ctx, req.GetFence()); err != nil {
		return nil, err
	}
	epoch := req.GetFence().GetEpoch()
	s.mu.Lock()
	cur, old := s.epoch, s.job
	s.mu.Unlock()
	if epoch < cur {
		return nil, fmt.Errorf("%w: configure for epoch %d < %d", ErrStaleEpoch, epoch, cur)
	}
	spec, err := decodeConfigure(req, s.cfg.Model, s.cfg.TLS != nil)
	if err != nil {
		return nil, err
	}
	plan, me, tc, shaper := spec.plan, spec.me, spec.train, spec.shaper
	if shaper != nil {
		s.cfg.Infof("worker %s: epoch %d: emulating the links of cluster %q to its %d peers", s.cfg.Name, epoch, spec.cluster, len(plan.Workers)-1)
	}
	j := &job{plan: plan, ix: scheduler.NewIndex(plan), me: me, epoch: epoch, train: tc, by: map[int]*stage{}, names: spec.names}
	held := append([]int(nil), plan.Workers[me].Stages...)
	sort.Ints(held)
	owners := plan.StageWorkers()
	fresh, reuse := false, old
	if req.GetFresh() {
		// A recovery rolling back to the start: nothing trained survives,
		// so the shards are rebuilt from the seed exactly as a new job's.
		fresh, reuse = true, nil
	}
	var nparams int64
	for _, id := range held {
		st, reused, err := buildStage(plan, tc, id, reuse)
		if err != nil {
			return nil, err
		}
		fresh = fresh || !reused
		st.replicas = owners[id]
		for mb := range plan.Microbatches {
			for _, h := range plan.Microbatches[mb].Path {
				if h.Stage == id {
					st.visits++
					if h.Worker == me {
						st.local++
					}
				}
			}
		}
		setupOrdered(st, plan)
		for _, p := range st.shard.Params() {
			nparams += int64(len(p.W))
		}
		j.stages = append(j.stages, st)
		j.by[id] = st
	}
	if j.out, err = transport.NewOutbox(s.cfg.Transport, req.GetPeers(), shaper, tlsx.DialOption(s.cfg.TLS)); err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.job, s.epoch = j, epoch
	if fresh {
		// New parameters: nothing has been applied to them. The
		// coordinator loads a checkpoint to resume.
		s.applied = 0
	}
	s.mu.Unlock()
	s.mbox.dropBefore(slot{epoch: epoch})
	// Tensors of this epoch that arrived before the plan named its
	// workers were admitted on their certificate's role alone: drop
	// those whose claimed sender is not the certificate's worker.
	if dropped := s.mbox.dropIf(epoch, func(a arrival) bool {
		return a.sender != nil && !j.sentBy(int(a.hdr.GetFrom()), a.sender.Name)
	}); dropped > 0 {
		s.metrics.Load().Denied(path.Base(pb.Peer_SendTensor_FullMethodName), metrics.DenyWrongSender)
		s.cfg.Logf("worker %s: epoch %d: dropped %d early tensors sent under another worker's name", s.cfg.Name, epoch, dropped)
	}
	if old != nil {
		old.out.Close()
	}
	return &pb.ConfigureResponse{NumParams: nparams}, nil
}

// buildStage makes the shard and optimizer of stage id, reusing the
// previous job's when it held exactly the same part of the same model (a
// replan keeps the trained weights of stages that did not move).
func buildStage(plan *scheduler.Plan, tc model.TrainConfig, id int, old *job) (*stage, bool, error) {
	ps := plan.Stages[id]
	spec := model.ShardSpec{Lo: ps.FirstLayer, Hi: ps.FirstLayer + ps.Layers, Embed: id == 0, Head: id == plan.HeadStage}
	if old != nil && old.train.Model == tc.Model && old.train.Optim == tc.Optim {
		for _, st := range old.stages {
			if st.spec == spec {
				return &stage{id: id, spec: spec, shard: st.shard, opt: st.opt}, true, nil
			}
		}
	}
	sh, err := model.NewShard(tc.Model, spec)
	if err != nil {
		return nil, false, fmt.Errorf("%w: stage %d: %v", ErrBadInput, id, err)
	}
	opt, err := model.NewOptimizer(tc.Optim, sh.Params())
	if err != nil {
		return nil, false, fmt.Errorf("%w: stage %d: %v", ErrBadInput, id, err)
	}
	return &stage{id: id, spec: spec, shard: sh, opt: opt}, false, nil
}
