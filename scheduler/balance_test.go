package scheduler

import (
	"math"
	"math/rand"
	"testing"
)

func bottleneck(st []Stage, head int, c LayerCosts, speeds []float64) float64 {
	worst := 0.0
	for k, s := range st {
		t := float64(s.Layers) * c.Block
		if k == 0 {
			t += c.Embed
		}
		if k == head {
			t += c.Head
		}
		worst = max(worst, t/speeds[k])
	}
	return worst
}

// bruteBest is the smallest bottleneck over every split into p stages of
// at least one block.
func bruteBest(layers, head int, c LayerCosts, speeds []float64) float64 {
	p := len(speeds)
	best := math.Inf(1)
	var rec func(k, left int, acc []Stage)
	rec = func(k, left int, acc []Stage) {
		if k == p-1 {
			st := append(acc, Stage{Layers: left})
			best = min(best, bottleneck(st, head, c, speeds))
			return
		}
		for n := 1; n <= left-(p-1-k); n++ {
			rec(k+1, left-n, append(acc, Stage{Layers: n}))
		}
	}
	rec(0, layers, nil)
	return best
}

func checkSplit(t *testing.T, st []Stage, layers, p int) {
	t.Helper()
	if len(st) != p {
		t.Fatalf("%d stages, want %d", len(st), p)
	}
	next := 0
	for i, s := range st {
		if s.Layers < 1 || s.FirstLayer != next {
			t.Fatalf("stage %d = %+v (next layer %d): not contiguous or empty: %+v", i, s, next, st)
		}
		next += s.Layers
	}
	if next != layers {
		t.Fatalf("stages hold %d layers, want %d", next, layers)
	}
}

// TestBalanceLayersIsOptimal compares with every split of small models.
func TestBalanceLayersIsOptimal(t *testing.T) {
	r := rand.New(rand.NewSource(1))
	for range 300 {
		p := 1 + r.Intn(4)
		layers := p + r.Intn(9)
		speeds := make([]float64, p)
		for i := range speeds {
			speeds[i] = []float64{0.25, 0.5, 1, 1, 1, 2}[r.Intn(6)]
		}
		head := 0
		if r.Intn(2) == 0 {
			head = p - 1
		}
		c := LayerCosts{Block: 0.5 + r.Float64(), Embed: r.Float64() * 2, Head: r.Float64() * 4}
		st, err := BalanceLayers(layers, head, c, speeds)
		if err != nil {
			t.Fatal(err)
		}
		checkSplit(t, st, layers, p)
		got, want := bottleneck(st, head, c, speeds), bruteBest(layers, head, c, speeds)
		if got > want*(1+1e-9) {
			t.Fatalf("layers %d speeds %v head %d costs %+v: bottleneck %v, best split has %v (%+v)", layers, speeds, head, c, got, want, st)
		}
	}
}

// Equal nodes and no embedding or head cost: the even split. A node at
// half speed gets about half a fair share.
func TestBalanceLayersShapes(t *testing.T) {
	st, err := BalanceLayers(10, 3, LayerCosts{Block: 1}, []float64{1, 1, 1, 1})
	if err != nil {
		t.Fatal(err)
	}
	even := SplitLayers(10, 4)
	for i := range st {
		if st[i] != even[i] {
			t.Fatalf("equal nodes: %+v, want the even split %+v", st, even)
		}
	}
	st, err = BalanceLayers(14, 3, LayerCosts{Block: 1}, []float64{1, 0.5, 1, 1})
	if err != nil {
		t.Fatal(err)
	}
	if got := []int{st[0].Layers, st[1].Layers, st[2].Layers, st[3].Layers}; got[1] != 2 || got[0]+got[2]+got[3] != 12 {
		t.Fatalf("half-speed stage 1: layers %v, want 2 there and 4 on each other", got)
	}
	// A heavy head moves blocks off the head stage.
	st, _ = BalanceLayers(8, 1, LayerCosts{Block: 1, Head: 3}, []float64{1, 1})
	if st[1].Layers >= st[0].Layers {
		t.Fatalf("heavy head: %+v, want fewer blocks on the head stage", st)
	}
}

func TestBalanceLayersRefusesBadInput(t *testing.T) {
	for _, k := range []struct {
		layers, head int
		c            LayerCosts
		speeds       []float64
	}{
		{3, 0, LayerCosts{Block: 1}, []float64{1, 1, 1, 1}},
		{8, 1, LayerCosts{Block: 1}, []float64{1, 1, 1}},
		{8, 0, LayerCosts{Block: -1}, []float64{1, 1}},
		{8, 0, LayerCosts{Block: math.NaN()}, []float64{1, 1}},
		{8, 0, LayerCosts{Block: 1}, []float64{1, 0}},
		{8, 0, LayerCosts{Block: 1}, []float64{1, math.Inf(1)}},
		{8, 0, LayerCosts{Block: 1}, nil},
	} {
		if _, err := BalanceLayers(k.layers, k.head, k.c, k.speeds); err == nil {
			t.Errorf("%+v accepted", k)
		}
	}
}

func FuzzBalanceLayers(f *testing.F) {
	f.Add(8, 1, 1.0, 0.0, 0.5, 1.0, 0.5, 1.0)
	f.Fuzz(func(t *testing.T, layers, head int, block, embed, hd, s0, s1, s2 float64) {
		if layers > 1<<12 {
			return
		}
		speeds := []float64{s0, s1, s2}
		st, err := BalanceLayers(layers, head, LayerCosts{block, embed, hd}, speeds)
		if err != nil {
			return
		}
		checkSplit(t, st, layers, len(speeds))
	})
}
