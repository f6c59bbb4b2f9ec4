package scheduler

import "fmt"

// ListCosts prices one model chunk's actions for ListCandidates, in any
// integer unit (microseconds, say): F its forward, B its whole backward,
// I and W the backward's halves (input and weight gradients).
type ListCosts struct{ F, B, I, W int64 }

// ListCandidate is a plan the list scheduler made for ListCandidates and
// a description of the knobs that made it.
type ListCandidate struct {
	Plan *Plan
	Desc string
}

// ListCandidates list-schedules s at the chunk costs c, the way the
// zero-bubble authors' automatic scheduler searches: over placements (the
// looped placement with one and two chunks per worker, and the V), the
// backward whole or split in I and W, and per-worker activation caps
// (none, 1F1B's, and the V schedules' 2p, p+1 and about 2p/3+1 chunks).
// For each, greedyPlan keeps the best warm-up and W policy at these
// costs. A fixed s.Chunks keeps the placements with that many chunks; a
// fixed s.Memory caps every candidate. Combinations the shape refuses are
// left out; the result is in a fixed order, so the search stays a pure
// function of (s, c). Plans are named "auto".
func ListCandidates(s Spec, c ListCosts) []ListCandidate {
	if c.F < 1 || c.B < 1 || c.I < 1 || c.W < 0 {
		return nil
	}
	type shape struct {
		pl   placement
		v    int
		name string
	}
	var shapes []shape
	for _, sh := range []shape{{looped, 1, "looped v=1"}, {looped, 2, "looped v=2"}, {vShape, 2, "V"}} {
		if s.Chunks == 0 || s.Chunks == sh.v {
			shapes = append(shapes, sh)
		}
	}
	var out []ListCandidate
	p := s.Stages
	for _, sh := range shapes {
		var caps []int
		if sh.pl == vShape {
			caps = []int{2 * p, p + 1, (2*p+2)/3 + 1}
		} else {
			caps = []int{0, sh.v * p, (sh.v*p+1)/2 + sh.v}
		}
		for _, split := range []bool{false, true} {
			for _, capacity := range caps {
				spec := s
				spec.Chunks = sh.v
				cfg := greedyConfig{split: split, fCost: c.F, bCost: c.B}
				if split {
					cfg.bCost, cfg.wCost = c.I, c.W
				}
				pl, err := greedyPlan(spec, "auto", sh.v, sh.pl, func(p, v, m int) []greedyConfig {
					if capacity > 0 {
						cfg.memory = make([]int, p)
						for r := range cfg.memory {
							cfg.memory[r] = max(v, capacity)
						}
					}
					return policies(cfg)
				})
				if err != nil || Validate(pl) != nil {
					continue
				}
				backward := "B"
				if split {
					backward = "I+W"
				}
				limit := "no cap"
				if capacity > 0 {
					limit = fmt.Sprintf("cap %d", capacity)
				}
				out = append(out, ListCandidate{Plan: pl, Desc: fmt.Sprintf("list %s %s %s", sh.name, backward, limit)})
			}
		}
	}
	return out
}
