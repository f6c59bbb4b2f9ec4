package serve_test

import (
	"context"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"

	"stagecoach/compute"
	"stagecoach/compute/builtin"
	"stagecoach/compute/conformance"
	"stagecoach/compute/remote"
	"stagecoach/compute/serve"
)

// poisoning is the built-in backend whose stages scribble NaN over every
// output handed back to them: a server that recycled an output before its
// bytes were out would send NaN.
type poisoning struct {
	builtin.Backend
	recycled *atomic.Int64
}

type poisonStage struct {
	compute.Stage
	recycled *atomic.Int64
}

func (p poisoning) Load(ctx context.Context, spec compute.LoadSpec) (compute.Stage, error) {
	st, err := p.Backend.Load(ctx, spec)
	if err != nil {
		return nil, err
	}
	return poisonStage{st, p.recycled}, nil
}

func (p poisonStage) Recycle(t *compute.Tensor) {
	for i := range t.Data {
		t.Data[i] = float32(math.NaN())
	}
	p.recycled.Add(1)
	p.Stage.(compute.Recycler).Recycle(t)
}

// TestOutputsRecycledAfterSending: the server hands a stage's outputs
// back only once their bytes are in the shared region or sent as chunks,
// so a client reads the outputs the in-process stage computes, bit for
// bit, while the stage reuses their memory.
func TestOutputsRecycledAfterSending(t *testing.T) {
	dir, err := os.MkdirTemp("", "rc")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	addr := "unix://" + filepath.Join(dir, "s.sock")
	var recycled atomic.Int64
	srv, err := serve.Start(poisoning{recycled: &recycled}, serve.Options{BorrowInputs: true}, addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Stop)
	spec := compute.LoadSpec{Model: conformance.ModelJSON(1), Optim: conformance.DefaultOptim, Shard: compute.ShardSpec{Lo: 1, Hi: 2}}
	const b = 2
	n := b * conformance.Ctx * conformance.Dim
	x := &compute.Tensor{Shape: []int{b, conformance.Ctx, conformance.Dim}, Data: make([]float32, n)}
	g := &compute.Tensor{Shape: x.Shape, Data: make([]float32, n)}
	for i := range x.Data {
		x.Data[i], g.Data[i] = float32(i%13)/13-0.5, float32(i%7)/70
	}
	for _, tc := range []struct {
		name string
		shm  int64
	}{{"shared memory", 0}, {"chunks", -1}} {
		t.Run(tc.name, func(t *testing.T) {
			far, err := remote.Dial(context.Background(), addr, remote.Options{SharedMemoryBytes: tc.shm})
			if err != nil {
				t.Fatal(err)
			}
			defer far.Close()
			remoteSt, err := far.Load(context.Background(), spec)
			if err != nil {
				t.Fatal(err)
			}
			defer remoteSt.Close()
			near, err := builtin.Backend{}.Load(context.Background(), spec)
			if err != nil {
				t.Fatal(err)
			}
			defer near.Close()
			before := recycled.Load()
			for mb := range 3 {
				for _, st := range []compute.Stage{near, remoteSt} {
					if err := st.ZeroGrad(); err != nil {
						t.Fatal(err)
					}
				}
				want, err := near.Forward(mb, x)
				if err != nil {
					t.Fatal(err)
				}
				got, err := remoteSt.Forward(mb, x)
				if err != nil {
					t.Fatal(err)
				}
				conformance.RequireBits(t, fmt.Sprintf("Forward of microbatch %d, through the server vs in process", mb), got.Data, want.Data)
				if want, err = near.Backward(mb, g); err != nil {
					t.Fatal(err)
				}
				if got, err = remoteSt.Backward(mb, g); err != nil {
					t.Fatal(err)
				}
				conformance.RequireBits(t, fmt.Sprintf("Backward of microbatch %d, through the server vs in process", mb), got.Data, want.Data)
			}
			if n := recycled.Load() - before; n != 6 {
				t.Errorf("the server handed back %d outputs of 6", n)
			}
		})
	}
}
