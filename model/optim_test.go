package model

import (
	"math"
	"testing"
)

func TestLRSchedule(t *testing.T) {
	c := OptimConfig{LR: 1, Warmup: 10, TotalSteps: 110}.WithDefaults()
	cases := map[int]float64{1: 0.1, 10: 1, 60: 0.55, 110: 0.1, 500: 0.1}
	for step, want := range cases {
		if got := c.LRAt(step); math.Abs(got-want) > 1e-12 {
			t.Errorf("LRAt(%d) = %v, want %v", step, got, want)
		}
	}
}

// TestAdamWFirstStep: with bias correction the first update is
// lr·(sign(g) + wd·w) for every element.
func TestAdamWFirstStep(t *testing.T) {
	p := &Tensor{Name: "w", W: []float32{1, -2, 0.5}, G: []float32{0.3, -4, 1e-3}, Decay: true}
	o, err := NewOptimizer(OptimConfig{Kind: "adamw", LR: 0.1, WeightDecay: 0.5, Eps: 1e-12}, []*Tensor{p})
	if err != nil {
		t.Fatal(err)
	}
	o.Update(1, 0.1)
	want := []float64{1 - 0.1*(1+0.5), -2 - 0.1*(-1-1), 0.5 - 0.1*(1+0.25)}
	for i, w := range want {
		if math.Abs(float64(p.W[i])-w) > 1e-6 {
			t.Errorf("w[%d] = %v, want %v", i, p.W[i], w)
		}
	}
}

// TestLAMBTrustRatio: each LAMB step moves a tensor by exactly lr·‖w‖.
func TestLAMBTrustRatio(t *testing.T) {
	p := &Tensor{Name: "w", W: []float32{3, 4}, G: []float32{1, -2}}
	o, _ := NewOptimizer(OptimConfig{Kind: "lamb", LR: 0.01}, []*Tensor{p})
	o.Update(1, 0.01)
	dx, dy := float64(p.W[0])-3, float64(p.W[1])-4
	if got := math.Hypot(dx, dy); math.Abs(got-0.05) > 1e-6 {
		t.Fatalf("step norm %v, want lr·‖w‖ = 0.05", got)
	}
	if _, err := NewOptimizer(OptimConfig{Kind: "sgd"}, nil); err == nil {
		t.Fatal("unknown optimizer accepted")
	}
}
