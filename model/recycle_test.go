package model

import (
	"math"
	"math/rand/v2"
	"testing"
)

// TestRecycledOutputsKeepTheBits: outputs written into buffers handed
// back through Recycle (poisoned with NaN first, as stale data would be)
// are the same bits as into fresh memory, for Forward, Loss and Backward,
// and so are the gradients; and Recycle does reuse the buffers.
func TestRecycledOutputsKeepTheBits(t *testing.T) {
	cfg := Config{Layers: 2, Dim: 16, Heads: 2, Ctx: 8, Seed: 3}
	type pipe struct{ body, head *Shard }
	build := func() pipe {
		body, err := NewShard(cfg, ShardSpec{Lo: 0, Hi: 1, Embed: true})
		if err != nil {
			t.Fatal(err)
		}
		head, err := NewShard(cfg, ShardSpec{Lo: 1, Hi: 2, Head: true})
		if err != nil {
			t.Fatal(err)
		}
		return pipe{body, head}
	}
	fresh, recycled := build(), build()
	const b, mbs = 2, 3
	r := rand.New(rand.NewPCG(5, 5))
	var reused int
	// run drives microbatch mb through p and returns its outputs;
	// recycle poisons and hands back each output once copied.
	run := func(p pipe, mb int, tokens []float32, targets []int32, recycle bool) [][]float32 {
		var outs [][]float32
		keep := func(s *Shard, a *Activations) {
			outs = append(outs, append([]float32(nil), a.Data...))
			if recycle {
				for i := range a.Data {
					a.Data[i] = float32(math.NaN())
				}
				before := s.spare.Len()
				s.Recycle(a.Data)
				if s.spare.Len() == before {
					t.Fatalf("Recycle kept nothing with %d spares", before)
				}
			}
		}
		y, err := p.body.Forward(mb, &Activations{Shape: []int{b, cfg.Ctx}, Data: tokens})
		if err != nil {
			t.Fatal(err)
		}
		h := append([]float32(nil), y.Data...)
		keep(p.body, y)
		z, err := p.head.Forward(mb, &Activations{Shape: []int{b, cfg.Ctx, cfg.Dim}, Data: h})
		if err != nil {
			t.Fatal(err)
		}
		hz := append([]float32(nil), z.Data...)
		keep(p.head, z)
		_, g, err := p.head.Loss(mb, &Activations{Shape: []int{b, cfg.Ctx, cfg.Dim}, Data: hz}, targets)
		if err != nil {
			t.Fatal(err)
		}
		gz := append([]float32(nil), g.Data...)
		keep(p.head, g)
		n := p.head.spare.Len()
		dx, err := p.head.Backward(mb, &Activations{Shape: []int{b, cfg.Ctx, cfg.Dim}, Data: gz})
		if err != nil {
			t.Fatal(err)
		}
		if recycle && p.head.spare.Len() == n-1 {
			reused++
		}
		gh := append([]float32(nil), dx.Data...)
		keep(p.head, dx)
		if _, err := p.body.Backward(mb, &Activations{Shape: []int{b, cfg.Ctx, cfg.Dim}, Data: gh}); err != nil {
			t.Fatal(err)
		}
		return outs
	}
	for mb := range mbs {
		tokens := make([]float32, b*cfg.Ctx)
		targets := make([]int32, b*cfg.Ctx)
		for i := range tokens {
			tokens[i] = float32(r.IntN(256))
			targets[i] = int32(r.IntN(256))
		}
		want := run(fresh, mb, tokens, targets, false)
		got := run(recycled, mb, tokens, targets, true)
		for i := range want {
			for j := range want[i] {
				if math.Float32bits(got[i][j]) != math.Float32bits(want[i][j]) {
					t.Fatalf("microbatch %d, output %d, element %d: %v recycled, %v fresh", mb, i, j, got[i][j], want[i][j])
				}
			}
		}
	}
	if reused != mbs {
		t.Errorf("Backward took a recycled buffer in %d of %d microbatches", reused, mbs)
	}
	for _, sp := range [][2]*Shard{{fresh.body, recycled.body}, {fresh.head, recycled.head}} {
		for i, p := range sp[0].params {
			q := sp[1].params[i]
			for j := range p.G {
				if math.Float32bits(p.G[j]) != math.Float32bits(q.G[j]) {
					t.Fatalf("%s gradient element %d: %v recycled, %v fresh", p.Name, j, q.G[j], p.G[j])
				}
			}
		}
	}
}

// TestRecycleIsBounded: a shard keeps at most maxSpare buffers, and none
// of no capacity.
func TestRecycleIsBounded(t *testing.T) {
	s, err := NewShard(Config{Layers: 1, Dim: 16, Heads: 2, Ctx: 8, Seed: 3}, ShardSpec{Lo: 0, Hi: 1})
	if err != nil {
		t.Fatal(err)
	}
	s.Recycle(nil)
	for range 2 * maxSpare {
		s.Recycle(make([]float32, 4))
	}
	if s.spare.Len() != maxSpare {
		t.Fatalf("%d spares kept, want %d", s.spare.Len(), maxSpare)
	}
	if got := s.output(5); len(got) != 5 || s.spare.Len() != maxSpare {
		t.Fatalf("output(5) with spares of 4: len %d, %d spares left", len(got), s.spare.Len())
	}
	if got := s.output(3); len(got) != 3 || s.spare.Len() != maxSpare-1 {
		t.Fatalf("output(3): len %d, %d spares left", len(got), s.spare.Len())
	}
}
