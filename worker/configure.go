package worker

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"sort"

	"stagecoach/compute"
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
// the stages it holds. Only the control goroutine touches it after
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

// stage is one held stage: the backend's stage that computes it and what
// the worker needs to drive it.
type stage struct {
	id   int
	spec compute.ShardSpec
	cs   compute.Stage
	// desc is cs.Describe() at load; grads is its gradient length, read
	// by peer goroutines checking all-reduce tensors (cs is not).
	desc     compute.Description
	grads    int
	replicas []int // workers holding the stage, replica order
	// visits is the number of microbatches whose path visits the stage,
	// over all replicas: the divisor of the gradient (see the model's
	// exactness contract); local counts those visiting it here.
	visits, local int
	reduced       bool // gradients finished this iteration
	// ordered is set when the stage reduces in microbatch order
	// (ordered.go).
	ordered *orderedState
}

// ModelConfig is the JSON a coordinator sends as model_json. It is the
// subset of model.TrainConfig the worker needs, with the same field names,
// so a marshalled model.TrainConfig is accepted as is, plus the optional
// backend.
type ModelConfig struct {
	Model model.Config      `json:"model"`
	Optim model.OptimConfig `json:"optim"`
	// Backend, when set, names the compute backend the job must run on
	// (compute.Backend.Name, e.g. "go"): a worker computing with another
	// refuses the Configure. Empty: any.
	Backend string `json:"backend,omitempty"`
}

// modelJSON is model_json as decoded: a whole model.TrainConfig (every
// field known, so unknown ones are refused) and ModelConfig's backend.
type modelJSON struct {
	model.TrainConfig
	Backend string `json:"backend,omitempty"`
}

// decodeModelConfig decodes and validates model_json, refusing a model
// beyond lim before anything is allocated for it. It returns the backend
// the job asks for ("" for any).
func decodeModelConfig(b []byte, lim model.Limits) (model.TrainConfig, string, error) {
	var mj modelJSON
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&mj); err != nil {
		return mj.TrainConfig, "", fmt.Errorf("%w: model_json: %v", ErrBadInput, err)
	}
	tc := mj.TrainConfig
	tc.Model = tc.Model.WithDefaults()
	tc.Optim = tc.Optim.WithDefaults()
	if err := tc.Model.Validate(); err != nil {
		return tc, "", fmt.Errorf("%w: %v", ErrBadInput, err)
	}
	if err := tc.Optim.Validate(); err != nil {
		return tc, "", fmt.Errorf("%w: %v", ErrBadInput, err)
	}
	if err := tc.Model.CheckLimits(lim, tc.MicrobatchSize); err != nil {
		return tc, "", fmt.Errorf("%w: model_json: %v", ErrBadInput, err)
	}
	return tc, mj.Backend, nil
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
	backend string           // the backend model_json asks for ("": any)
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
	tc, backend, err := decodeModelConfig(req.GetModelJson(), lim)
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
	spec := &configureSpec{plan: plan, me: me, train: tc, names: names, backend: backend}
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
	s.noteBackend(err)
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
	if old == nil {
		s.cfg.MemoryProbe.Rebase() // nothing of a model held yet
	}
	if name := s.cfg.Backend.Name(); spec.backend != "" && spec.backend != name {
		return nil, fmt.Errorf("%w: model_json asks for compute backend %q, worker %s computes with %q", ErrBadInput, spec.backend, s.cfg.Name, name)
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
		// so the stages are rebuilt from the seed exactly as a new job's.
		fresh, reuse = true, nil
	}
	// loaded are the stages this Configure loads: closed again if it
	// fails (the reused ones still belong to the published job).
	var loaded []*stage
	ok := false
	defer func() {
		if !ok {
			s.closeStages(loaded)
		}
	}()
	var nparams int64
	for _, id := range held {
		st, reused, err := s.buildStage(ctx, plan, tc, id, reuse, j)
		if err != nil {
			return nil, err
		}
		if !reused {
			loaded = append(loaded, st)
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
		j.stages = append(j.stages, st)
		j.by[id] = st
		if err := setupOrdered(st, plan); err != nil {
			return nil, err
		}
		nparams += int64(st.grads)
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
	ok = true
	if old != nil {
		old.out.Close()
		s.closeStages(dropped(old, j))
	}
	return &pb.ConfigureResponse{NumParams: nparams}, nil
}

// dropped lists the stages of old that j does not keep.
func dropped(old, j *job) []*stage {
	kept := map[compute.Stage]bool{}
	for _, st := range j.stages {
		kept[st.cs] = true
	}
	var out []*stage
	for _, st := range old.stages {
		if !kept[st.cs] {
			out = append(out, st)
		}
	}
	return out
}

// closeStages releases stages no job holds any more. A failure to close
// is only logged: nothing depends on the stage any longer.
func (s *Server) closeStages(sts []*stage) {
	for _, st := range sts {
		if err := st.cs.Close(); err != nil {
			s.cfg.Logf("worker %s: %v", s.cfg.Name, st.fail("close", err))
		}
	}
}

// buildStage loads stage id through the worker's backend, reusing the
// previous job's stage when it held exactly the same part of the same
// model with the same optimizer (a replan keeps the trained weights of
// stages that did not move). Each old stage is reused at most once, by
// comparison with the stages j already holds.
func (s *Server) buildStage(ctx context.Context, plan *scheduler.Plan, tc model.TrainConfig, id int, old, j *job) (*stage, bool, error) {
	ps := plan.Stages[id]
	spec := compute.ShardSpec{Lo: ps.FirstLayer, Hi: ps.FirstLayer + ps.Layers, Embed: id == 0, Head: id == plan.HeadStage}
	if old != nil && old.train.Model == tc.Model && old.train.Optim == tc.Optim {
		for _, st := range old.stages {
			if st.spec == spec && !j.holds(st.cs) {
				return &stage{id: id, spec: spec, cs: st.cs, desc: st.desc, grads: st.grads}, true, nil
			}
		}
	}
	mj, err := json.Marshal(tc.Model)
	if err != nil {
		return nil, false, err
	}
	oj, err := json.Marshal(tc.Optim)
	if err != nil {
		return nil, false, err
	}
	name := s.cfg.Backend.Name()
	cs, err := s.cfg.Backend.Load(ctx, compute.LoadSpec{Model: mj, Optim: oj, Shard: spec})
	if err != nil {
		if errors.Is(err, compute.ErrBackend) {
			return nil, false, fmt.Errorf("stage %d: backend %s: load: %w", id, name, err)
		}
		return nil, false, fmt.Errorf("%w: stage %d: backend %s: %v", ErrBadInput, id, name, err)
	}
	st := &stage{id: id, spec: spec, cs: cs, desc: cs.Describe()}
	if st.desc.Backend == "" {
		st.desc.Backend = name
	}
	if err := checkDescription(st.desc, tc.Model); err != nil {
		_ = cs.Close()
		return nil, false, st.fail("load", err)
	}
	st.grads = st.desc.GradElems()
	return st, false, nil
}

// holds reports whether j already holds the backend stage cs.
func (j *job) holds(cs compute.Stage) bool {
	for _, st := range j.stages {
		if st.cs == cs {
			return true
		}
	}
	return false
}

// checkDescription checks what a backend says of a stage it loaded
// against the model: hidden states as wide as the model's, and no more
// parameter elements than the whole model has (the worker allocates
// gradient buffers of that size). Anything else is an impossible answer,
// a failure of the backend.
func checkDescription(d compute.Description, cfg model.Config) error {
	if d.Width != cfg.Dim {
		return fmt.Errorf("%w: stage width %d, the model's is %d", compute.ErrBackend, d.Width, cfg.Dim)
	}
	limit := model.NumParams(cfg)
	var total int64
	for _, p := range d.Params {
		n := int64(1)
		for _, dim := range p.Shape {
			if dim < 0 || (dim > 0 && n > limit/int64(dim)) {
				return fmt.Errorf("%w: parameter %q has shape %v, the model has %d parameters", compute.ErrBackend, p.Name, p.Shape, limit)
			}
			n *= int64(dim)
		}
		if total += n; total > limit {
			return fmt.Errorf("%w: the stage's parameters have more than the model's %d elements", compute.ErrBackend, limit)
		}
	}
	return nil
}

// fail names the stage and its backend in err, from operation op. An
// error marked compute.ErrBackend stays so marked.
func (st *stage) fail(op string, err error) error {
	return fmt.Errorf("stage %d: backend %s: %s: %w", st.id, st.desc.Backend, op, err)
}
