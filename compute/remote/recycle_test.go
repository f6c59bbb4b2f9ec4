package remote_test

import (
	"fmt"
	"math"
	"testing"

	"stagecoach/compute"
	"stagecoach/compute/builtin"
	"stagecoach/compute/conformance"
	"stagecoach/compute/remote"
	"stagecoach/compute/serve"
)

// TestRecycledOutputsAreReused: a tensor handed back through Recycle
// (poisoned with NaN first) receives the next output of the stage, over
// the shared region and over chunks, and that output has the same bits
// as in process.
func TestRecycledOutputsAreReused(t *testing.T) {
	for _, tc := range []struct {
		name string
		shm  int64
	}{{"shared memory", 0}, {"chunks", -1}} {
		t.Run(tc.name, func(t *testing.T) {
			rb := dialServer(t, builtin.Backend{}, serve.Options{}, remote.Options{SharedMemoryBytes: tc.shm})
			st := load(t, rb, blocks)
			defer st.Close()
			ref := load(t, builtin.Backend{}, blocks)
			defer ref.Close()
			x := hidden()
			var last *float32
			for mb := range 3 {
				want, err := ref.Forward(mb, x)
				if err != nil {
					t.Fatal(err)
				}
				got, err := st.Forward(mb, x)
				if err != nil {
					t.Fatal(err)
				}
				if mb > 0 && &got.Data[0] != last {
					t.Errorf("microbatch %d: Forward's output is not in the buffer handed back", mb)
				}
				conformance.RequireBits(t, fmt.Sprintf("Forward of microbatch %d, through the protocol vs in process", mb), got.Data, want.Data)
				for i := range got.Data {
					got.Data[i] = float32(math.NaN())
				}
				last = &got.Data[0]
				st.(compute.Recycler).Recycle(got)
			}
		})
	}
}
