package skippipe

import "math"

// Placement is an assignment of nodes to stages.
type Placement struct {
	// Partition lists node indices per stage, stage 0 first, each in
	// ascending order.
	Partition [][]int
	// Cost is the placement objective reached (see PlacementCost).
	Cost float64
	// Evaluations counts objective evaluations.
	Evaluations int
}

// PlacementCost is the objective Place minimises, in seconds of one
// microbatch's work:
//
//   - pipeline: for each consecutive pair of stages, and for the last stage
//     and stage 0 (the loss returns to the origin), the mean delay over all
//     node pairs of the two stages, both directions averaged;
//   - data parallel: for each stage with n > 1 nodes, its ring all-reduce,
//     2(n-1)/n times the worst delay between two of its nodes;
//   - compute: for each stage, its slowest node's forward plus backward
//     (stage replicas wait for each other at the all-reduce).
//
// partition must hold every node once with the configured stage sizes.
func PlacementCost(cfg Config, partition [][]int) (float64, error) {
	if err := cfg.Check(); err != nil {
		return 0, err
	}
	if err := checkPartition(partition, cfg.StageSizes, len(cfg.NodeNames)); err != nil {
		return 0, err
	}
	return placementCost(&cfg, partition), nil
}

func placementCost(cfg *Config, parts [][]int) float64 {
	d := cfg.Delay
	br := cfg.BackwardRatio
	if br == 0 {
		br = 1.5
	}
	ns := len(parts)
	cost := 0.0
	for s := range ns {
		a, b := parts[s], parts[(s+1)%ns]
		sum := 0.0
		for _, x := range a {
			for _, y := range b {
				sum += d[x][y] + d[y][x]
			}
		}
		cost += sum / float64(2*len(a)*len(b))
		n := len(a)
		worst, slow := 0.0, 0.0
		for i, x := range a {
			slow = max(slow, cfg.ForwardS[x])
			for _, y := range a[i+1:] {
				worst = max(worst, d[x][y], d[y][x])
			}
		}
		if n > 1 {
			cost += 2 * float64(n-1) / float64(n) * worst
		}
		cost += (1 + br) * slow
	}
	return cost
}

// Place assigns nodes to stages (sizes from cfg.StageSizes) minimising
// PlacementCost: simulated annealing over swaps of two nodes in different
// stages, restarted from the identity order and from seeded shuffles, the
// best result kept. Deterministic for cfg.Seed.
func Place(cfg *Config) (*Placement, error) {
	if err := cfg.Check(); err != nil {
		return nil, err
	}
	n := len(cfg.NodeNames)
	ns := len(cfg.StageSizes)
	rng := newRand(cfg.Seed, 0x91ace)
	// perm[i] is the node in slot i; slots are cut into stages in order.
	first := make([]int, ns+1)
	for s, k := range cfg.StageSizes {
		first[s+1] = first[s] + k
	}
	stageOfSlot := make([]int, n)
	for s := range ns {
		for i := first[s]; i < first[s+1]; i++ {
			stageOfSlot[i] = s
		}
	}
	parts := make([][]int, ns)
	cut := func(perm []int) [][]int {
		for s := range ns {
			parts[s] = perm[first[s]:first[s+1]]
		}
		return parts
	}
	out := &Placement{Cost: math.Inf(1)}
	iters := min(max(200*n, 4000), 40000)
	restarts := 4
	for r := range restarts {
		perm := make([]int, n)
		for i := range perm {
			perm[i] = i
		}
		if r > 0 {
			rng.Shuffle(n, func(i, j int) { perm[i], perm[j] = perm[j], perm[i] })
		}
		cur := placementCost(cfg, cut(perm))
		out.Evaluations++
		bestPerm, best := append([]int(nil), perm...), cur
		t0 := 0.05 * cur
		for it := range iters {
			i, j := rng.IntN(n), rng.IntN(n)
			if stageOfSlot[i] == stageOfSlot[j] {
				continue
			}
			perm[i], perm[j] = perm[j], perm[i]
			v := placementCost(cfg, cut(perm))
			out.Evaluations++
			temp := t0 * (1 - float64(it)/float64(iters))
			if v <= cur || (temp > 0 && rng.Float64() < math.Exp((cur-v)/temp)) {
				cur = v
				if v < best {
					best = v
					copy(bestPerm, perm)
				}
				continue
			}
			perm[i], perm[j] = perm[j], perm[i]
		}
		if best < out.Cost {
			out.Cost = best
			out.Partition = make([][]int, ns)
			for s := range ns {
				p := append([]int(nil), bestPerm[first[s]:first[s+1]]...)
				sortInts(p)
				out.Partition[s] = p
			}
			// Sorting changes the summation order: report the cost of
			// the partition as returned.
			out.Cost = placementCost(cfg, out.Partition)
		}
	}
	return out, nil
}

func sortInts(a []int) {
	sortStable(len(a), func(i, j int) bool { return a[i] < a[j] }, func(i, j int) { a[i], a[j] = a[j], a[i] })
}
