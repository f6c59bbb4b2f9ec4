package model

import (
	"math/rand/v2"
	"testing"
)

// TestMemoryFormulasMatchAllocations: the floats a shard allocates for one
// microbatch's saved activations and for its scratch are exactly what
// ShardActivationFloats and ShardWorkspaceFloats say (the simulator prices
// memory with them), for shards with and without the embedding and the
// head.
func TestMemoryFormulasMatchAllocations(t *testing.T) {
	cfg := Config{Layers: 3, Dim: 16, Heads: 2, Ctx: 8, Hidden: 40, Vocab: 30, Seed: 1}.WithDefaults()
	r := rand.New(rand.NewPCG(1, 2))
	const b = 3
	n := b * cfg.Ctx
	for _, spec := range []ShardSpec{{Lo: 0, Hi: 3, Embed: true, Head: true}, {Lo: 0, Hi: 1, Embed: true}, {Lo: 1, Hi: 3}, {Lo: 2, Hi: 3, Head: true}} {
		s, err := NewShard(cfg, spec)
		if err != nil {
			t.Fatal(err)
		}
		x := &Activations{Shape: []int{b, cfg.Ctx, cfg.Dim}, Data: randSlice(r, n*cfg.Dim, 1)}
		if spec.Embed {
			x = &Activations{Shape: []int{b, cfg.Ctx}, Data: make([]float32, n)}
			for i := range x.Data {
				x.Data[i] = float32(r.IntN(cfg.Vocab))
			}
		}
		if _, err := s.Forward(0, x); err != nil {
			t.Fatal(err)
		}
		c := s.caches[0]
		got := len(c.tokens)
		for _, v := range c.res {
			got += len(v)
		}
		for _, bc := range c.blocks {
			for _, v := range [][]float32{bc.h1, bc.r1, bc.qkv, bc.p, bc.att, bc.x2, bc.h2, bc.r2, bc.u, bc.th, bc.a} {
				got += len(v)
			}
		}
		if want := float64(n) * ShardActivationFloats(cfg, spec.Hi-spec.Lo, spec.Embed); float64(got) != want {
			t.Errorf("shard %+v: a microbatch's cache holds %d floats, ShardActivationFloats gives %v", spec, got, want)
		}
		params, held := 0, 0
		for _, p := range s.Params() {
			params += len(p.W)
			held += len(p.W) + len(p.G) + len(s.scratch[p])
		}
		if held != ParamCopies*params {
			t.Errorf("shard %+v: %d floats per %d parameters, ParamCopies is %d", spec, held, params, ParamCopies)
		}
		s.ensureScratch(b, cfg.Ctx)
		ws := 0
		for _, v := range [][]float32{s.dx, s.dh, s.datt, s.dqkv, s.da, s.ds, s.hf, s.rf, s.dhf, s.logits} {
			ws += len(v)
		}
		if want := ShardWorkspaceFloats(cfg, float64(n), spec.Head, attnWorkers()); float64(ws) != want {
			t.Errorf("shard %+v: scratch of %d floats, ShardWorkspaceFloats gives %v", spec, ws, want)
		}
	}
}
