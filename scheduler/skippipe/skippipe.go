package skippipe

import (
	"fmt"
	"math"
	"math/rand/v2"

	"stagecoach/scheduler"
)

// SkipPipe schedule names.
const (
	// CA is the collision-aware SkipPipe plan (TC2 on).
	CA = "skippipe"
	// NonCA plans each microbatch as if it had the nodes to itself (TC2
	// off); nodes then process work in planned order and collide.
	NonCA = "skippipe-nonca"
	// Random skips stages at random (network oblivious) while keeping
	// every rule and cap.
	Random = "skippipe-random"
	// Full is GPipe over the SkipPipe placement: every microbatch of
	// every origin (the same microbatches as the skipping plans) visits
	// all stages in order, the loss on its origin, each node running all
	// its forwards before any backward. The node of every hop is chosen by
	// the same local search as the skipping paths, so the skipping plans
	// are compared with a strong full pipeline.
	Full = "skippipe-full"
	// FullGreedy is Full without the search: each hop goes to the
	// nearest node of the next stage with room for an even share. Greedy
	// hops can be cornered onto a placement's worst links.
	FullGreedy = "skippipe-full-greedy"
)

// Variants lists the schedules PlanVariant builds.
func Variants() []string {
	return []string{Full, CA, NonCA, Random}
}

// Stats reports what a SkipPipe planner did.
type Stats struct {
	// Partition is the placement used: node indices per stage.
	Partition [][]int
	// PlacementCost is Place's objective for that placement.
	PlacementCost float64
	// EstimateS is the planner's own estimate of the iteration's compute
	// makespan (seconds) for the returned plan.
	EstimateS float64
	// Objective is the caller's Objective for the returned plan (NaN when
	// no Objective was given).
	Objective float64
	// Evaluations counts internal estimates; ObjectiveCalls counts calls
	// of the caller's Objective.
	Evaluations, ObjectiveCalls int
	// Policy is the dispatch rule that ordered the node programs.
	Policy string
}

var policyNames = map[spPolicy]string{polCritical: "critical-path", polFIFO: "arrival", polBackward: "backward-first", polFlush: "gpipe-flush", polLaunch: "launch-then-backward"}

// PlanVariant builds the named schedule (see Variants).
func PlanVariant(name string, cfg Config) (*scheduler.Plan, *Stats, error) {
	switch name {
	case CA:
		cfg.CollisionAware = true
		return Plan(cfg)
	case NonCA:
		cfg.CollisionAware = false
		return Plan(cfg)
	case Random:
		return PlanRandom(cfg)
	case Full:
		return FullPipeline(cfg)
	case FullGreedy:
		return fullPipeline(cfg, false)
	}
	return nil, nil, fmt.Errorf("unknown skippipe schedule %q (known: skippipe, skippipe-full, skippipe-full-greedy, skippipe-nonca, skippipe-random)", name)
}

// PlacementFor is the placement the skipping planners use for cfg:
// cfg.Partition, or Place's, refined by the planner's own timing estimate
// when cfg.RefinePlacement is set (full-path rules are never refined).
// To compare variants over one placement, compute it once and pass it to
// each as Partition.
func PlacementFor(cfg Config) (*Placement, error) {
	if err := cfg.Check(); err != nil {
		return nil, err
	}
	pl := &Placement{Partition: cfg.Partition}
	if pl.Partition == nil {
		var err error
		if pl, err = Place(&cfg); err != nil {
			return nil, err
		}
	}
	if cfg.RefinePlacement && cfg.rules().PathStages != len(cfg.StageSizes) {
		pl.Partition = refinePlacement(&cfg, pl.Partition, cfg.Seed, &pl.Evaluations)
	}
	pl.Cost = placementCost(&cfg, pl.Partition)
	return pl, nil
}

// prepare checks cfg and fixes the placement.
func prepare(cfg *Config) (*spNet, *Stats, error) {
	pl, err := PlacementFor(*cfg)
	if err != nil {
		return nil, nil, err
	}
	stats := &Stats{Objective: math.NaN(), PlacementCost: pl.Cost, Evaluations: pl.Evaluations}
	nt := newNet(cfg, pl.Partition)
	stats.Partition = nt.parts
	return nt, stats, nil
}

// Plan plans SkipPipe paths and node programs for cfg: collision aware
// when cfg.CollisionAware is set (schedule "skippipe"), otherwise
// "skippipe-nonca". It builds balanced paths greedily, improves them by a
// seeded local search (node trades, adjacent swaps, stage exchanges, tail
// exchanges, all within the rules and caps) against its timing estimate,
// orders each node's work by the best of several dispatch rules and, when
// cfg.Objective is set, finishes the search against it.
func Plan(cfg Config) (*scheduler.Plan, *Stats, error) {
	nt, stats, err := prepare(&cfg)
	if err != nil {
		return nil, nil, err
	}
	name := NonCA
	if cfg.CollisionAware {
		name = CA
	}
	rng := newRand(cfg.Seed, 0x5c1b)
	ev := newEval(nt)
	score := func(s *spState) float64 {
		stats.Evaluations++
		if cfg.CollisionAware {
			return ev.run(s.paths, polCritical, false) + 0.1*ev.meanDone
		}
		return ev.runFree(s.paths, false)
	}
	// Search from both greedy starts, then polish the better.
	iters := nt.defaultIterations(len(nt.mbOrigin))
	var st *spState
	bestV := math.Inf(1)
	for _, grouped := range []bool{false, true} {
		s0, err := nt.construct(nil, nt.rules.PathStages, nt.cap, grouped)
		if err != nil {
			continue
		}
		s0 = nt.search(s0, rng, nt.cap, iters/3, score)
		if v := score(s0); v < bestV {
			st, bestV = s0, v
		}
	}
	if cfg.CollisionAware {
		seqs := nt.stageSeqs(nt.rules.PathStages-1, maxStageSeqs)
		for _, size := range groupSizes(nt.cap) {
			g := nt.constructGroups(ev, &stats.Evaluations, seqs, maxTimedPaths, size, repairRounds)
			if g == nil {
				continue
			}
			g = nt.search(g, rng, nt.cap, iters/6, score)
			if v := score(g); v < bestV {
				st, bestV = g, v
			}
		}
	}
	if st == nil {
		return nil, nil, fmt.Errorf("skippipe: no balanced paths fit the caps and the jump limit")
	}
	st = nt.search(st, rng, nt.cap, iters/3, score)
	pol := polFIFO
	var plan *scheduler.Plan
	if cfg.CollisionAware {
		plan, pol = nt.bestPolicy(st, ev, name, &cfg, stats, spPolicies)
	} else {
		ev.runFree(st.paths, true)
		plan = nt.buildPlan(st.paths, ev.order, name, true)
		cfg.scoreResult(plan, stats)
	}
	if cfg.Objective != nil && cfg.CollisionAware {
		plan, st = nt.objectiveSearch(st, rng, ev, name, &cfg, stats, pol)
	}
	stats.Policy = policyNames[pol]
	if cfg.CollisionAware {
		stats.EstimateS = ev.run(st.paths, pol, false)
	} else {
		ev.runFree(st.paths, false)
		// What the planned order costs once nodes do collide.
		stats.EstimateS = nt.replay(plan)
	}
	return plan, stats, nil
}

// PlanRandom is network-oblivious skipping ("skippipe-random"):
// each microbatch visits randomly chosen stages, in a random legal order,
// on randomly chosen nodes with room, keeping every rule and cap; nodes
// process work in arrival order. cfg.Seed picks the draw.
func PlanRandom(cfg Config) (*scheduler.Plan, *Stats, error) {
	nt, stats, err := prepare(&cfg)
	if err != nil {
		return nil, nil, err
	}
	rng := newRand(cfg.Seed, 0x7a4d)
	var st *spState
	for try := 0; try < 64 && st == nil; try++ {
		st, _ = nt.construct(rng, nt.rules.PathStages, nt.cap, false)
	}
	if st == nil {
		// Perturbed picks kept failing the caps: fall back to balanced
		// stages with random nodes.
		if st, err = nt.construct(nil, nt.rules.PathStages, nt.cap, false); err != nil {
			return nil, nil, err
		}
	}
	ev := newEval(nt)
	stats.EstimateS = ev.run(st.paths, polFIFO, true)
	stats.Evaluations = 1
	stats.Policy = policyNames[polFIFO]
	plan := nt.buildPlan(st.paths, ev.order, Random, true)
	cfg.scoreResult(plan, stats)
	return plan, stats, nil
}

// FullPipeline is GPipe over the same placement and the same microbatches
// as the skipping plans (schedule "gpipe"): every microbatch of every
// origin visits all stages in order and returns to its origin for the
// loss; a node runs all its forwards before any backward. Which node of a
// stage serves which microbatch is searched like the skipping paths,
// from the greedy choice of "skippipe-full-greedy", within an even share per node
// (full paths cannot meet the skipping caps). The authors' own baseline
// form, partition_sizes[1] pipelines of 9 microbatches, is
// skippiperef.BaselinePlan.
func FullPipeline(cfg Config) (*scheduler.Plan, *Stats, error) {
	return fullPipeline(cfg, true)
}

func fullPipeline(cfg Config, tuned bool) (*scheduler.Plan, *Stats, error) {
	ns := len(cfg.StageSizes)
	cfg.Rules = scheduler.SkipRules{PathStages: ns, MaxSwaps: 0, SwapDistance: 0, MaxJump: 1, MaxPerWorker: math.MaxInt32}
	nt, stats, err := prepare(&cfg)
	if err != nil {
		return nil, nil, err
	}
	m := len(nt.mbOrigin)
	perNode := 1
	for _, p := range nt.parts[1:] {
		perNode = max(perNode, (m+len(p)-1)/len(p))
	}
	st, err := nt.construct(nil, ns, perNode, false)
	if err != nil {
		return nil, nil, err
	}
	rng := newRand(cfg.Seed, 0x91be)
	ev := newEval(nt)
	score := func(s *spState) float64 {
		stats.Evaluations++
		return ev.run(s.paths, polFlush, false)
	}
	name := FullGreedy
	if tuned {
		st = nt.search(st, rng, perNode, nt.defaultIterations(m)/2, score)
		name = Full
	}
	stats.EstimateS = ev.run(st.paths, polFlush, true)
	stats.Policy = policyNames[polFlush]
	plan := nt.buildPlan(st.paths, ev.order, name, false)
	cfg.scoreResult(plan, stats)
	return plan, stats, nil
}

// defaultIterations scales the search to about 1e8 simple steps.
func (nt *spNet) defaultIterations(m int) int {
	if nt.iterations > 0 {
		return nt.iterations
	}
	k := 2*nt.rules.PathStages + 1
	if nt.rules.PathStages > len(nt.parts) {
		k = 2*len(nt.parts) + 1
	}
	it := int(1e8 / float64(m*m*k+1))
	return min(max(it, 1500), 20000)
}

// search is a seeded simulated annealing over legal moves; it returns the
// best state seen.
func (nt *spNet) search(st *spState, rng *rand.Rand, perNodeCap, iters int, score func(*spState) float64) *spState {
	cur := score(st)
	best, bestScore := st.clone(), cur
	t0 := 0.01 * cur
	var mv spMove
	for it := range iters {
		if !nt.mutate(st, rng, perNodeCap, &mv) {
			st.undo(&mv)
			continue
		}
		v := score(st)
		temp := t0 * (1 - float64(it)/float64(iters))
		if v <= cur || (temp > 0 && rng.Float64() < math.Exp((cur-v)/temp)) {
			cur = v
			if v < bestScore {
				best, bestScore = st.clone(), v
			}
			continue
		}
		st.undo(&mv)
	}
	return best
}

// objective scores plan with the caller's Objective, counting the call.
func (cfg *Config) objective(plan *scheduler.Plan, stats *Stats) float64 {
	stats.ObjectiveCalls++
	return cfg.Objective(plan)
}

// scoreResult records the caller's Objective of the returned plan, when
// there is one.
func (cfg *Config) scoreResult(plan *scheduler.Plan, stats *Stats) {
	if cfg.Objective != nil {
		stats.Objective = cfg.objective(plan, stats)
	}
}

// bestPolicy orders the programs of st by each dispatch rule and keeps the
// fastest, by the caller's Objective when given, else by the estimate.
func (nt *spNet) bestPolicy(st *spState, ev *spEval, name string, cfg *Config, stats *Stats, pols []spPolicy) (*scheduler.Plan, spPolicy) {
	var best *scheduler.Plan
	bestPol, bestV := pols[0], math.Inf(1)
	for _, pol := range pols {
		v := ev.run(st.paths, pol, true)
		stats.Evaluations++
		plan := nt.buildPlan(st.paths, ev.order, name, true)
		if cfg.Objective != nil {
			v = cfg.objective(plan, stats)
		}
		if v < bestV {
			best, bestPol, bestV = plan, pol, v
		}
	}
	if cfg.Objective != nil {
		stats.Objective = bestV
	}
	return best, bestPol
}

// objectiveSearch continues the local search with the caller's Objective.
func (nt *spNet) objectiveSearch(st *spState, rng *rand.Rand, ev *spEval, name string, cfg *Config, stats *Stats, pol spPolicy) (*scheduler.Plan, *spState) {
	evals := cfg.ObjectiveEvals
	if evals == 0 {
		evals = 150
	}
	planOf := func(s *spState) *scheduler.Plan {
		ev.run(s.paths, pol, true)
		return nt.buildPlan(s.paths, ev.order, name, true)
	}
	bestPlan := planOf(st)
	cur := stats.Objective
	if math.IsNaN(cur) {
		cur = cfg.objective(bestPlan, stats)
	}
	var mv spMove
	for range evals * 4 {
		if evals == 0 {
			break
		}
		if !nt.mutate(st, rng, nt.cap, &mv) {
			st.undo(&mv)
			continue
		}
		evals--
		plan := planOf(st)
		v := cfg.objective(plan, stats)
		if v < cur {
			cur, bestPlan = v, plan
			continue
		}
		st.undo(&mv)
	}
	stats.Objective = cur
	return bestPlan, st
}

// replay times a plan's programs in program order under the estimate's
// cost model: what the non-CA order costs once microbatches collide.
func (nt *spNet) replay(p *scheduler.Plan) float64 { return newEval(nt).replayPlan(p) }

// replayPlan times p's programs in program order under the estimate's
// cost model (links never queue).
func (e *spEval) replayPlan(p *scheduler.Plan) float64 {
	nt := e.nt
	ix := scheduler.NewIndex(p)
	ms := make([]*scheduler.Machine, len(p.Workers))
	for w := range ms {
		ms[w] = scheduler.NewMachine(ix, w)
	}
	node := make([]int, len(ms))
	index := make(map[string]int, len(nt.names))
	for i, n := range nt.names {
		index[n] = i
	}
	for w := range ms {
		node[w] = index[p.Workers[w].Node]
	}
	free := make([]float64, len(ms))
	arrive := map[scheduler.Tag]float64{}
	end := 0.0
	for progress := true; progress; {
		progress = false
		for w, m := range ms {
			for {
				a, ready, ok := m.Peek()
				if !ok || !ready {
					break
				}
				t := free[w]
				if tag, need := ix.Input(w, a); need {
					t = max(t, arrive[tag])
				}
				m.Start()
				d := 0.0
				switch a.Kind {
				case scheduler.Forward:
					d = nt.fwd[node[w]]
				case scheduler.Backward:
					d = nt.bwdRatio * nt.fwd[node[w]]
				case scheduler.Loss:
					d = nt.lossRatio * nt.fwd[node[w]]
				}
				free[w] = t + d
				end = max(end, free[w])
				for _, msg := range m.Finish() {
					arrive[msg.Tag()] = free[w] + nt.hopDelay(node[w], node[msg.To])
					// Plans built here never address a message twice.
					_ = ms[msg.To].Deliver(msg)
				}
				progress = true
			}
		}
	}
	return end
}

// buildPlan turns paths and per-node task orders into a Plan. Worker w
// runs on node w.
func (nt *spNet) buildPlan(paths [][]int, order [][]Task, name string, skip bool) *scheduler.Plan {
	ns := len(nt.parts)
	p := &scheduler.Plan{Version: scheduler.FormatVersion, Schedule: name, HeadStage: 0, Stages: scheduler.SplitLayers(nt.layers, ns)}
	p.Workers = make([]scheduler.Worker, len(nt.names))
	own := make([]int, len(nt.names))
	for _, o := range nt.mbOrigin {
		own[o]++
	}
	// Workers are numbered stage by stage, each stage in ring order: a
	// stage's replicas all-reduce around a ring in worker order, so the
	// ring takes the shortest tour found over the stage's links.
	wid := make([]int, len(nt.names))
	next := 0
	for s, part := range nt.parts {
		for r, v := range nt.ringOrder(part) {
			wid[v] = next
			w := &p.Workers[next]
			next++
			w.Node, w.Stages, w.Replica = nt.names[v], []int{s}, r
			if skip {
				w.Memory = max(nt.cap, own[v])
			}
		}
	}
	p.Microbatches = make([]scheduler.Microbatch, len(paths))
	for mb, path := range paths {
		hops := make([]scheduler.Hop, len(path))
		for i, v := range path {
			hops[i] = scheduler.Hop{Worker: wid[v], Stage: nt.stageOf[v]}
		}
		p.Microbatches[mb] = scheduler.Microbatch{Samples: nt.samples, Path: hops, LossWorker: wid[path[0]]}
	}
	p.Programs = make([][]scheduler.Action, len(nt.names))
	for v := range p.Programs {
		prog := make([]scheduler.Action, 0, len(order[v])+2)
		for _, t := range order[v] {
			path := paths[t.Microbatch]
			k, j := len(path), int(t.Step)
			switch {
			case j < k:
				prog = append(prog, scheduler.F(int(t.Microbatch), nt.stageOf[path[j]]))
			case j == k:
				prog = append(prog, scheduler.L(int(t.Microbatch), 0))
			default:
				prog = append(prog, scheduler.B(int(t.Microbatch), nt.stageOf[path[2*k-j]]))
			}
		}
		if s := nt.stageOf[v]; len(nt.parts[s]) > 1 {
			prog = append(prog, scheduler.R(s))
		}
		p.Programs[wid[v]] = append(prog, scheduler.Step())
	}
	if skip {
		r := nt.rules
		p.Skip = &r
	}
	return p
}

// ringOrder orders a stage's nodes for its ring all-reduce: the tour
// whose slowest link (delay, worse direction) is fastest, by exhaustive
// search up to 7 nodes (first node fixed, ties to the first tour found),
// nearest neighbour beyond. Nodes come in ascending order when no tour
// beats that.
func (nt *spNet) ringOrder(part []int) []int {
	nodes := append([]int(nil), part...)
	sortInts(nodes)
	if len(nodes) < 3 {
		return nodes
	}
	link := func(a, b int) float64 { return max(nt.hopDelay(a, b), nt.hopDelay(b, a)) }
	worst := func(t []int) float64 {
		w := 0.0
		for i := range t {
			w = max(w, link(t[i], t[(i+1)%len(t)]))
		}
		return w
	}
	best := append([]int(nil), nodes...)
	bestW := worst(best)
	if len(nodes) <= 7 {
		cur := append([]int(nil), nodes...)
		var perm func(i int)
		perm = func(i int) {
			if i == len(cur) {
				if w := worst(cur); w < bestW {
					bestW = w
					copy(best, cur)
				}
				return
			}
			for j := i; j < len(cur); j++ {
				cur[i], cur[j] = cur[j], cur[i]
				perm(i + 1)
				cur[i], cur[j] = cur[j], cur[i]
			}
		}
		perm(1)
		return best
	}
	tour := []int{nodes[0]}
	used := map[int]bool{nodes[0]: true}
	for len(tour) < len(nodes) {
		last, pick := tour[len(tour)-1], -1
		for _, v := range nodes {
			if !used[v] && (pick < 0 || link(last, v) < link(last, pick)) {
				pick = v
			}
		}
		used[pick] = true
		tour = append(tour, pick)
	}
	if worst(tour) < bestW {
		return tour
	}
	return best
}

// newRand is the planners' seeded source; stream separates the uses of
// one seed.
func newRand(seed int64, stream uint64) *rand.Rand {
	return rand.New(rand.NewPCG(uint64(seed), stream))
}

// groupSizes are the agent sizes the group construction tries: whole
// node caps (the authors' agents), halves, pairs and single microbatches.
func groupSizes(cap int) []int {
	out := []int{cap}
	for _, s := range []int{(cap + 1) / 2, 2, 1} {
		if s < out[len(out)-1] {
			out = append(out, s)
		}
	}
	return out
}
