package scheduler

import "fmt"

// The schedules people compare pipelines by, beyond the classic ones:
//
//   - looped-bfs (Lamy-Poirier, "Breadth-First Pipeline Parallelism",
//     2022): the looped placement of interleaved 1F1B (rank r holds stages
//     r, r+p, ...), but breadth first: a rank runs every microbatch
//     through its first chunk, then every microbatch through its second,
//     and so on; the backward visits the chunks in reverse the same way.
//     GPipe's memory (every activation held until the backward), the
//     interleaved schedule's shorter fill and drain.
//   - interleaved-zb (the idea of PyTorch's ScheduleInterleavedZeroBubble):
//     the looped placement with the backward split into I and W, W filling
//     the bubbles, each rank capped at interleaved 1F1B's activation
//     count.
//   - zb-v (Qi et al., "Zero Bubble Pipeline Parallelism", ICLR 2024,
//     section 6): the V placement (rank r holds stages r and 2p-1-r, the
//     head on rank 0), I and W split, every rank capped at 2p chunk
//     activations: p stages' worth, 1F1B's peak.
//   - v-half and v-min (Qi et al., "Pipeline Parallelism with
//     Controllable Memory", NeurIPS 2024): the same V, capped at p+1 and
//     at ceil(2p/3)+1 chunk activations, about 1/2 and 1/3 of 1F1B's peak
//     (each a chunk above), trading some bubble. The paper builds them
//     from repeated building blocks; here they are the memory-capped list
//     schedule below, also tried paced (rank r keeping about a third of
//     its first chunk's round trip in flight). v-half's bubble is below
//     1F1B's from p = 3; v-min's is 1.0 to 2.1 times 1F1B's from p = 4,
//     more than the paper's V-Min (see workbench_test.go).
//   - dualpipe-v (DeepSeek-V3 technical report, DualPipe, in the V-shape
//     "cut in half" form PyTorch ships as DualPipeV): the zb-v
//     construction, but a rank that has a forward and a backward ready
//     runs them as one Overlapped action. Microbatches enter from one end
//     only (DualPipe's two-way feed would need two copies of the
//     parameters, which the V form exists to avoid).
//
// All but looped-bfs come from greedySchedule at unit chunk costs (forward,
// I and W one tick each; an overlapped pair one tick, its full overlap).

func init() {
	Register("looped-bfs", func(s Spec) (*Plan, error) {
		return classicPlan(s, "looped-bfs", 2, loopedBFSOrder)
	})
	Register("interleaved-zb", func(s Spec) (*Plan, error) {
		return greedyPlan(s, "interleaved-zb", 2, looped, func(p, v, m int) []greedyConfig {
			memory := make([]int, p)
			for r := range memory {
				// Interleaved 1F1B's peak on rank r: its warm-up and one.
				memory[r] = max(v, min(m*v, interleavedWarmup(r, p, v, m)+1))
			}
			return policies(greedyConfig{split: true, fCost: 1, bCost: 1, wCost: 1, memory: memory})
		})
	})
	registerV("zb-v", func(p int) int { return 2 * p }, false)
	registerV("v-half", func(p int) int { return p + 1 }, false)
	registerV("v-min", func(p int) int { return (2*p+2)/3 + 1 }, false)
	registerV("dualpipe-v", func(p int) int { return 2 * p }, true)
}

// registerV registers a V-shape schedule whose ranks hold at most
// capacity(p) chunk activations (never fewer than two, which a microbatch
// needs to turn round).
func registerV(name string, capacity func(p int) int, pair bool) {
	Register(name, func(s Spec) (*Plan, error) {
		if s.Chunks != 0 && s.Chunks != 2 {
			return nil, fmt.Errorf("%s: chunks is %d, the V placement holds two stages per worker", name, s.Chunks)
		}
		return greedyPlan(s, name, 2, vShape, func(p, v, m int) []greedyConfig {
			memory := make([]int, p)
			for r := range memory {
				memory[r] = max(2, capacity(p))
			}
			c := greedyConfig{split: true, fCost: 1, bCost: 1, wCost: 1, memory: memory}
			if pair {
				c.pairCost = 1
			}
			out := policies(c)
			// Paced: rank r keeps about a third of its first chunk's round
			// trip (2(2p-1-r) ticks, a microbatch every 6) in flight.
			for extra := range 2 {
				open := make([]int, p)
				for r := range open {
					open[r] = max(1, (2*p+1-r)/3+extra)
				}
				for _, pc := range policies(c) {
					pc.open = open
					out = append(out, pc)
				}
			}
			return out
		})
	})
}

// loopedBFSOrder is the breadth-first order of one rank: all microbatches
// through chunk 0, then chunk 1, ..., then the backwards from the last
// chunk down, each chunk's microbatches in ascending order.
func loopedBFSOrder(rank, p, v, m int) []Action {
	out := make([]Action, 0, 2*m*v)
	for c := range v {
		for mb := range m {
			out = append(out, F(mb, c))
		}
	}
	for c := v - 1; c >= 0; c-- {
		for mb := range m {
			out = append(out, B(mb, c))
		}
	}
	return out
}

// policies varies a greedy configuration over the warm-up and W knobs
// (see greedyConfig), for greedyPlan to keep the fastest.
func policies(base greedyConfig) []greedyConfig {
	capacity := 0
	for _, c := range base.memory {
		capacity = max(capacity, c)
	}
	var out []greedyConfig
	for _, ff := range []int{0, capacity / 2, capacity} {
		for _, w := range []int{0, 1, capacity / 2, capacity - 1} {
			for _, nr := range []bool{false, true} {
				c := base
				c.forwardFirst, c.wAt, c.noReserve = ff, w, nr
				out = append(out, c)
			}
		}
	}
	return out
}
