package coordinator

import (
	"context"
	"fmt"
	"math"
	"sort"

	"stagecoach/costmodel"
	"stagecoach/internal/etcdx"
	"stagecoach/model"
	pb "stagecoach/proto"
	"stagecoach/scheduler"
	"stagecoach/timeline"
)

// costTracker keeps a cost model current from the workers' reported
// action timings of one plan: forward time per sample of every (worker,
// stage), the backward/forward and loss ratios, and the per-hop overhead
// the emulated links do not account for (loopback gRPC, framing, the
// receiver's wake-up). Links themselves come from the emulated cluster:
// on loopback the emulation is the network.
type costTracker struct {
	plan  *scheduler.Plan
	base  *costmodel.Cluster // emulated cluster, nil on plain loopback
	train model.TrainConfig
	names []string // plan worker -> node name
	steps int      // steps ingested
	warm  int      // steps skipped first

	fwd          map[[2]int][2]float64 // (worker, stage) -> seconds, samples
	fwdAll, bwd  float64
	loss, lossSm float64
	resid        []float64
	links        map[[2]int]*LinkTime // (from, to) plan workers
}

// LinkTime is one directed link's measured microbatch hop: the mean gap
// between the sender's forward ending and the idle receiver's forward
// starting, beside what the emulated (or no) link alone would take.
type LinkTime struct {
	From      string  `json:"from"`
	To        string  `json:"to"`
	Hops      int     `json:"hops"`
	MeasuredS float64 `json:"measured_s"`
	EmulatedS float64 `json:"emulated_s"`
}

func newCostTracker(p *scheduler.Plan, base *costmodel.Cluster, tc model.TrainConfig, warm int) *costTracker {
	t := &costTracker{plan: p, base: base, train: tc, warm: warm, fwd: map[[2]int][2]float64{}, links: map[[2]int]*LinkTime{}}
	for _, w := range p.Workers {
		t.names = append(t.names, w.Node)
	}
	return t
}

// add ingests one step's timeline (measurements.last: per-worker slices
// on one clock). The first warm steps of a plan are skipped.
func (t *costTracker) add(slices []timeline.Slice) {
	t.steps++
	if t.steps <= t.warm {
		return
	}
	type key struct {
		w int
		a scheduler.Action
	}
	at := map[key]timeline.Slice{}
	prevEnd := map[key]float64{}
	for i, s := range slices {
		k := key{s.Worker, s.Action}
		at[k] = s
		prevEnd[k] = math.Inf(-1)
		if i > 0 && slices[i-1].Worker == s.Worker {
			prevEnd[k] = slices[i-1].End
		}
		d := s.End - s.Start
		samples := 1.0
		if mb := s.Action.Microbatch; mb >= 0 && mb < len(t.plan.Microbatches) {
			samples = float64(t.plan.Microbatches[mb].Samples)
		}
		switch s.Action.Kind {
		case scheduler.Forward:
			f := t.fwd[[2]int{s.Worker, s.Action.Stage}]
			t.fwd[[2]int{s.Worker, s.Action.Stage}] = [2]float64{f[0] + d, f[1] + samples}
			t.fwdAll += d
		case scheduler.Backward:
			t.bwd += d
		case scheduler.Loss:
			t.loss += d
			t.lossSm += samples
		}
	}
	// A forward hop whose receiver sat idle: the gap between the sender's
	// forward ending and the receiver's starting is the transfer; what
	// exceeds the emulated price is overhead.
	bytes := float64(t.train.MicrobatchSize) * ActivationBytes(t.train.Model)
	for mb, p := range t.plan.Microbatches {
		for i := 1; i < len(p.Path); i++ {
			a, b := p.Path[i-1], p.Path[i]
			if a.Worker == b.Worker {
				continue
			}
			src, ok1 := at[key{a.Worker, scheduler.F(mb, a.Stage)}]
			dst, ok2 := at[key{b.Worker, scheduler.F(mb, b.Stage)}]
			if !ok1 || !ok2 || prevEnd[key{b.Worker, scheduler.F(mb, b.Stage)}] > src.End || dst.Start < src.End {
				continue
			}
			gap, em := dst.Start-src.End, t.emulated(a.Worker, b.Worker, bytes)
			t.resid = append(t.resid, gap-em)
			l := t.links[[2]int{a.Worker, b.Worker}]
			if l == nil {
				l = &LinkTime{From: t.names[a.Worker], To: t.names[b.Worker], EmulatedS: em}
				t.links[[2]int{a.Worker, b.Worker}] = l
			}
			l.MeasuredS = (l.MeasuredS*float64(l.Hops) + gap) / float64(l.Hops+1)
			l.Hops++
		}
	}
}

// emulated is the emulated cluster's price of one hop of a payload of
// bytes, alone on its link, as the link emulation charges it (0 without
// an emulated cluster).
func (t *costTracker) emulated(a, b int, bytes float64) float64 {
	if t.base == nil {
		return 0
	}
	ia, na, errA := t.base.Lookup(t.names[a])
	ib, nb, errB := t.base.Lookup(t.names[b])
	if errA != nil || errB != nil {
		return t.base.HopOverheadS
	}
	h := t.base.Price(ia, ib, na, nb, t.base.MessageBytes(bytes))
	return h.Occupancy() + h.Latency
}

// ready reports whether a cost model can be calibrated.
func (t *costTracker) ready() bool { return t.fwdAll > 0 && len(t.fwd) > 0 }

// model is the calibrated cost model: the emulated cluster (or a loopback
// one listing the plan's nodes) with measured compute per stage and node
// speed, backward and loss ratios, gradient sizes, and the hop overhead
// plus the measured residual. Nil when nothing was measured yet.
func (t *costTracker) model() (*costmodel.Cluster, error) {
	if !t.ready() {
		return nil, nil
	}
	var c *costmodel.Cluster
	if t.base != nil {
		var err error
		if c, err = cloneCluster(t.base); err != nil {
			return nil, err
		}
	} else {
		c = &costmodel.Cluster{AnyNode: true}
	}
	c.Name = "calibrated"
	ns := len(t.plan.Stages)
	stageSum, stageN := make([]float64, ns), make([]float64, ns)
	for k, v := range t.fwd {
		if v[1] > 0 && k[1] >= 0 && k[1] < ns {
			stageSum[k[1]] += v[0] / v[1]
			stageN[k[1]]++
		}
	}
	stageF := make([]float64, ns)
	layers := 0
	total := 0.0
	for s, st := range t.plan.Stages {
		layers += st.Layers
		if stageN[s] > 0 {
			stageF[s] = stageSum[s] / stageN[s]
		}
		total += stageF[s]
	}
	perLayer := total / float64(max(layers, 1))
	for s, st := range t.plan.Stages {
		if stageF[s] == 0 { // never measured: the mean layer's cost
			stageF[s] = perLayer * float64(st.Layers)
		}
	}
	// Node speed: a node's forwards against the stage means.
	speed := make([]float64, len(t.names))
	for w := range t.names {
		r, n := 0.0, 0.0
		for s := range ns {
			if v, ok := t.fwd[[2]int{w, s}]; ok && v[0] > 0 && v[1] > 0 {
				r += stageF[s] / (v[0] / v[1])
				n++
			}
		}
		speed[w] = 1
		if n > 0 {
			speed[w] = r / n
		}
	}
	k := &c.Compute
	k.LayerForwardS = perLayer
	k.StageForwardS = stageF
	k.BackwardRatio = 0
	if t.bwd > 0 {
		k.BackwardRatio = t.bwd / t.fwdAll
	}
	k.LossLayers = 0
	if t.lossSm > 0 && perLayer > 0 {
		k.LossLayers = t.loss / t.lossSm / perLayer
	}
	k.ActivationBytesPerSample = ActivationBytes(t.train.Model)
	k.MessageHeaderBytes = 0
	k.GradientBytesPerLayer = costmodel.GradientBytesPerLayer(t.train.Model)
	if g, err := costmodel.StageGradientBytes(t.plan, t.train.Model); err == nil {
		k.StageGradientBytes = g
	}
	for w, name := range t.names {
		found := false
		for i := range c.Nodes {
			if c.Nodes[i].Name == name {
				c.Nodes[i].Speed, found = speed[w], true
			}
		}
		if !found {
			c.Nodes = append(c.Nodes, costmodel.Node{Name: name, Speed: speed[w]})
		}
	}
	if len(t.resid) > 0 {
		c.HopOverheadS += max(median(t.resid), 0)
	}
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("coordinator: calibrated cost model: %w", err)
	}
	return c, nil
}

// costDrift is how far cost model b is from a for the plan's nodes: the
// largest relative change of a node's forward time per microbatch and
// stage, or of the per-hop overhead against the mean planned hop (a
// factor: 0.5 is 50% off). Missing models count as no drift.
func costDrift(a, b *costmodel.Cluster, names []string, cfg *Config) float64 {
	if a == nil || b == nil {
		return 0
	}
	ns := max(cfg.Stages, 1)
	fa, errA := a.NodeForwardS(names, cfg.Train.Model.Layers, ns, cfg.Train.MicrobatchSize)
	fb, errB := b.NodeForwardS(names, cfg.Train.Model.Layers, ns, cfg.Train.MicrobatchSize)
	if errA != nil || errB != nil {
		return 0 // a model that cannot price these nodes planned nothing on them
	}
	d := 0.0
	for i := range fa {
		d = max(d, max(fa[i], fb[i])/min(fa[i], fb[i])-1)
	}
	bytes := float64(cfg.Train.MicrobatchSize) * ActivationBytes(cfg.Train.Model)
	if delay, _, err := a.HopMatrix(names, a.MessageBytes(bytes)); err == nil {
		mean, n := 0.0, 0
		for i := range delay {
			for j := range delay[i] {
				if i != j {
					mean += delay[i][j]
					n++
				}
			}
		}
		// Compute and links are in the same units: a hop's overhead
		// moving by more than the threshold of a typical hop or forward.
		if scale := max(mean/float64(max(n, 1)), fa[0]); scale > 0 {
			d = max(d, math.Abs(b.HopOverheadS-a.HopOverheadS)/scale)
		}
	}
	return d
}

// Replan is one plan change the coordinator made on cost drift.
type Replan struct {
	// AfterStep is the last step of the previous plan.
	AfterStep int64 `json:"after_step"`
	Epoch     int64 `json:"epoch"`
	// Drift is the cost model's distance from the previous plan's.
	Drift    float64 `json:"drift"`
	PlanPath string  `json:"plan_path"`
}

// replanner is the drift watch of one leadership term.
type replanner struct {
	tracker *costTracker
	planned *costmodel.Cluster // the cost model the current plan was made with
	// last is the last calibration of a plan that was replaced: the
	// summary's cost model when the final plan ran too few steps.
	last    *costmodel.Cluster
	replans []Replan
	// manifest fields of the current plan, for the summary
	planPath, planHash string
}

// startReplanner arms the cost tracker (and, with cfg.ReplanDrift, the
// drift watch) for the current plan.
func (r *run) startReplanner() error {
	cfg := r.cfg
	base, err := emulatedCluster(cfg)
	if err != nil {
		return err
	}
	planned, err := cfg.planningCosts()
	if err != nil {
		return err
	}
	if r.drift == nil {
		r.drift = &replanner{}
	}
	r.drift.tracker = newCostTracker(r.plan, base, cfg.Train, cfg.ReplanWarmup)
	r.drift.planned = planned
	return nil
}

func emulatedCluster(cfg *Config) (*costmodel.Cluster, error) {
	if len(cfg.Cluster) == 0 {
		return nil, nil
	}
	c, err := costmodel.ParseCluster(cfg.Cluster)
	if err != nil {
		return nil, fmt.Errorf("coordinator: cluster: %w", err)
	}
	return c, nil
}

// maybeReplan runs between steps: it feeds the step just committed to the
// drift watch and, when the calibrated cost model has drifted past
// cfg.ReplanDrift from the one the plan was made with, plans again with
// it under a new epoch and hands the new plan to the workers. SkipPipe
// keeps its placement, so every worker keeps its stages, parameters and
// optimizer state; classic schedules keep theirs by construction, except
// that balanced stages (Config.Balance) are balanced again for the new
// calibration: when layers move, the state of the step travels through a
// checkpoint cut to the new ranges (saveForResplit). Nothing happens
// after the last step.
func (r *run) maybeReplan(ctx context.Context, step int64) error {
	if r.drift == nil || r.stats == nil {
		return nil
	}
	d := r.drift
	d.tracker.add(r.stats.last)
	if r.cfg.ReplanDrift <= 0 || step >= int64(r.cfg.Steps) || !d.tracker.ready() {
		return nil
	}
	k, err := d.tracker.model()
	if err != nil || k == nil {
		return err
	}
	names := make([]string, len(r.workers))
	for i, w := range r.workers {
		names[i] = w.member.Name
	}
	if d.planned == nil {
		// Uniform planning costs: judge against the first calibration.
		d.planned = k
		return nil
	}
	drift := costDrift(d.planned, k, names, r.cfg)
	if drift <= r.cfg.ReplanDrift {
		return nil
	}
	return r.replan(ctx, step, k, drift)
}

func (r *run) replan(ctx context.Context, step int64, k *costmodel.Cluster, drift float64) error {
	cfg := r.cfg
	keys := r.leader.Keys()
	epoch, err := nextEpoch(ctx, r.leader.Client(), keys)
	if err != nil {
		return err
	}
	members := make([]etcdx.Member, len(r.workers))
	for i, w := range r.workers {
		members[i] = w.member
	}
	sort.Slice(members, func(i, j int) bool { return members[i].Name < members[j].Name })
	old := cfg.Costs
	cfg.Costs, r.drift.last = k, k
	plan, ordered, layout, err := buildPlanFrom(cfg, members, epoch, r.plan)
	if err != nil {
		cfg.Costs = old
		return fmt.Errorf("coordinator: replan after step %d: %w", step, err)
	}
	// Balanced stages may move layers: their state travels (resplit.go).
	moved, err := r.saveForResplit(ctx, plan, step)
	if err != nil {
		return fmt.Errorf("coordinator: replan after step %d: %w", step, err)
	}
	planJSON, planPath, planHash, err := storePlan(cfg.OutDir, plan)
	if err != nil {
		return err
	}
	man := PlanManifest{Epoch: epoch, Schedule: plan.Schedule, Stages: len(plan.Stages), SHA256: planHash, Bytes: len(planJSON), Path: planPath, LeaderRev: r.leader.Rev()}
	for i, w := range plan.Workers {
		man.Workers = append(man.Workers, PlanWorker{Name: ordered[i].Name, Addr: ordered[i].Addr, Stages: w.Stages, Replica: w.Replica})
	}
	if err := r.leader.PutJSON(ctx, keys.Plan(epoch), man); err != nil {
		return err
	}
	// The connections stay; only their plan-worker order may change.
	byName := map[string]*workerConn{}
	for _, w := range r.workers {
		byName[w.member.Name] = w
	}
	for i, m := range ordered {
		w := byName[m.Name]
		w.idx = i
		r.workers[i] = w
	}
	r.plan = plan
	r.fence = &pb.Fence{Job: cfg.Job, LeaderRev: r.leader.Rev(), Epoch: epoch}
	tc := cfg.Train
	tc.Stages = len(plan.Stages)
	tc.Layout = layout
	if _, err := r.configure(ctx, planJSON, tc); err != nil {
		return fmt.Errorf("coordinator: replan after step %d: %w", step, err)
	}
	if err := r.loadResplit(ctx, moved); err != nil {
		return fmt.Errorf("coordinator: replan after step %d: %w", step, err)
	}
	r.stats = newMeasurements(plan, cfg.Steps)
	cfg.Logf("replan after step %d: cost model drifted %.0f%% (threshold %.0f%%); epoch %d: %s, plan %s",
		step, 100*drift, 100*cfg.ReplanDrift, epoch, plan.Schedule, planPath)
	r.drift.replans = append(r.drift.replans, Replan{AfterStep: step, Epoch: epoch, Drift: drift, PlanPath: planPath})
	r.drift.planPath, r.drift.planHash = planPath, planHash
	return r.startReplanner()
}

// finishReplans records the replans in the summary and makes it describe
// the plan in force at the end. With an emulated cluster, the summary's
// calibration and simulation are replaced by the tracker's (emulated links
// plus measured compute and residual overhead): the generic calibration
// would fold the emulated link times into one per-hop overhead.
func (r *run) finishReplans(s *Summary) {
	if r.drift == nil {
		return
	}
	k, err := r.drift.tracker.model()
	if err != nil || k == nil {
		k = r.drift.last
	}
	for _, l := range r.drift.tracker.links {
		s.Links = append(s.Links, *l)
	}
	sort.Slice(s.Links, func(i, j int) bool {
		a, b := s.Links[i], s.Links[j]
		return a.From < b.From || a.From == b.From && a.To < b.To
	})
	if k != nil {
		s.CostModel = k
		if r.drift.tracker.base != nil && r.cfg.Simulator != nil {
			if res, err := r.cfg.Simulator.Simulate(r.plan, k, true); err == nil {
				res.Schedule = r.plan.Schedule + " (simulated)"
				s.Calibration, s.Simulated = k, res
				s.SimulatedSpanS, s.SimulatedBubble = res.MakespanS, res.BubbleFraction
				s.SimError = ""
			}
		}
	}
	if len(r.drift.replans) == 0 {
		return
	}
	s.Replans = r.drift.replans
	s.Epoch = r.fence.Epoch
	s.Schedule = r.plan.Schedule
	s.PlanPath, s.PlanSHA256 = r.drift.planPath, r.drift.planHash
}
