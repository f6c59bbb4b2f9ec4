package scheduler

import (
	"errors"
	"fmt"
	"math"
)

// LayerCosts prices the parts of the model for BalanceLayers, per sample
// on a node of speed 1 (any unit, forward and backward together): a
// block, the embedding (always on the first stage) and the head with its
// loss (on the head stage). The head of a byte-level model weighs little;
// of a 50k-vocabulary one, several blocks.
type LayerCosts struct{ Block, Embed, Head float64 }

// BalanceLayers places layers blocks on len(speeds) contiguous stages,
// stage i on a node of speed speeds[i] (work per unit time; 0.5 is half
// speed), so that the slowest stage is as fast as it can be: a stage's
// time is its blocks' cost, plus the embedding on stage 0 and the head on
// stage head, over its speed. Every stage keeps at least one block. With
// equal speeds and no embedding or head cost it is the even split (earlier
// stages taking the remainder). The bottleneck is what a pipeline's
// steady state runs at; a simulation of the balanced plan says whether
// the whole iteration gained (see sim.Balance).
func BalanceLayers(layers, head int, c LayerCosts, speeds []float64) ([]Stage, error) {
	p := len(speeds)
	switch {
	case p < 1 || p > MaxStages:
		return nil, fmt.Errorf("balance: %d stages, want 1..%d", p, MaxStages)
	case layers < p:
		return nil, fmt.Errorf("balance: %d layers for %d stages (each needs one)", layers, p)
	case head != 0 && head != p-1:
		return nil, fmt.Errorf("balance: head on stage %d, want 0 or %d", head, p-1)
	case !(c.Block >= 0) || !(c.Embed >= 0) || !(c.Head >= 0) || math.IsInf(c.Block+c.Embed+c.Head, 0):
		return nil, fmt.Errorf("balance: costs must be finite and >= 0 (block %v, embed %v, head %v)", c.Block, c.Embed, c.Head)
	}
	minSpeed := math.Inf(1)
	for i, s := range speeds {
		if !(s > 0) || math.IsInf(s, 0) {
			return nil, fmt.Errorf("balance: stage %d's node speed is %v, want > 0", i, s)
		}
		minSpeed = min(minSpeed, s)
	}
	if c.Block == 0 {
		return SplitLayers(layers, p), nil
	}
	extra := func(k int) float64 {
		e := 0.0
		if k == 0 {
			e += c.Embed
		}
		if k == head {
			e += c.Head
		}
		return e
	}
	// counts gives each stage's block count at bottleneck t, or nil when
	// t is too short: greedily, each stage takes as many blocks as fit,
	// leaving one for every later stage. Taking more early never hurts
	// the later stages, so the greedy fits whenever any split does.
	counts := func(t float64) []int {
		out := make([]int, p)
		left := layers
		for k := range p {
			if k == p-1 {
				if extra(k)+float64(left)*c.Block > t*speeds[k] {
					return nil
				}
				out[k] = left
				return out
			}
			fit := math.Floor((t*speeds[k] - extra(k)) / c.Block)
			n := int(min(fit, float64(left-(p-1-k))))
			if n < 1 {
				return nil
			}
			out[k] = n
			left -= n
		}
		return out
	}
	lo, hi := 0.0, (float64(layers)*c.Block+c.Embed+c.Head)/minSpeed*(1+1e-9)
	if counts(hi) == nil {
		return nil, errors.New("balance: no split fits the upper bound (internal error)")
	}
	for range 200 {
		mid := (lo + hi) / 2
		if mid <= lo || mid >= hi {
			break
		}
		if counts(mid) != nil {
			hi = mid
		} else {
			lo = mid
		}
	}
	n := counts(hi)
	smooth(n, func(k int) float64 { return (extra(k) + float64(n[k])*c.Block) / speeds[k] })
	out := make([]Stage, p)
	first := 0
	for k, l := range n {
		out[k] = Stage{FirstLayer: first, Layers: l}
		first += l
	}
	return out, nil
}

// WithLayers returns a copy of p whose stages hold the given layer
// ranges (as many stages as p has), keeping everything else.
func WithLayers(p *Plan, layers []Stage) (*Plan, error) {
	if len(layers) != len(p.Stages) {
		return nil, fmt.Errorf("balance: %d layer ranges for %d stages", len(layers), len(p.Stages))
	}
	q := *p
	q.Stages = make([]Stage, len(p.Stages))
	for i, s := range p.Stages {
		s.FirstLayer, s.Layers = layers[i].FirstLayer, layers[i].Layers
		q.Stages[i] = s
	}
	return &q, nil
}

// smooth moves blocks across stage boundaries while a move lowers the
// slower of the two stages: the greedy split packs early stages up to the
// bottleneck, this spreads the slack (equal nodes get the even split).
// The bottleneck never grows, so the split stays optimal.
func smooth(n []int, time func(k int) float64) {
	for range 4 * len(n) * (1 + sumInts(n)) {
		moved := false
		for k := 0; k+1 < len(n); k++ {
			before := max(time(k), time(k+1))
			for _, d := range []int{-1, 1} { // stage k gives (-1) or takes (+1) a block
				if n[k]+d < 1 || n[k+1]-d < 1 {
					continue
				}
				n[k] += d
				n[k+1] -= d
				if max(time(k), time(k+1)) < before {
					moved = true
					break
				}
				n[k] -= d
				n[k+1] += d
			}
		}
		if !moved {
			return
		}
	}
}

func sumInts(xs []int) int {
	s := 0
	for _, x := range xs {
		s += x
	}
	return s
}
