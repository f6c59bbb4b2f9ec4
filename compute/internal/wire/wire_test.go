package wire

import (
	"errors"
	"io"
	"math"
	"slices"
	"strings"
	"testing"

	"stagecoach/compute"
	pb "stagecoach/proto/compute"
)

// pipe sends with Send and hands the frames to Recv, split again at the
// given sizes (0: as sent).
func pipe(t *testing.T, vals []Value, resplit int) ([]Value, int, error) {
	t.Helper()
	var frames []*pb.Frame
	err := Send(func(f *pb.Frame) error {
		if n := len(f.GetChunk()); n == 0 || n > ChunkBytes {
			t.Fatalf("a chunk of %d bytes", n)
		}
		// gRPC marshals before Send returns: keep a copy, as it does.
		frames = append(frames, &pb.Frame{Body: &pb.Frame_Chunk{Chunk: slices.Clone(f.GetChunk())}})
		return nil
	}, vals)
	if err != nil {
		return nil, 0, err
	}
	sent := len(frames)
	if resplit > 0 {
		var all []byte
		for _, f := range frames {
			all = append(all, f.GetChunk()...)
		}
		frames = nil
		for off := 0; off < len(all); off += resplit {
			frames = append(frames, &pb.Frame{Body: &pb.Frame_Chunk{Chunk: all[off:min(off+resplit, len(all))]}})
		}
	}
	metas := make([]*pb.TensorMeta, len(vals))
	for i, v := range vals {
		metas[i] = v.Meta
	}
	lim, _ := Limits{}.WithDefaults()
	sizes, err := Check(metas, lim)
	if err != nil {
		return nil, 0, err
	}
	i := 0
	got, err := Recv(func() (*pb.Frame, error) {
		if i == len(frames) {
			return nil, io.EOF
		}
		i++
		return frames[i-1], nil
	}, metas, sizes)
	return got, sent, err
}

func floats(n int) []float32 {
	out := make([]float32, n)
	for i := range out {
		out[i] = float32(i)*0.37 - 5
	}
	return out
}

// TestRoundTrip: tensors of every size, mixed dtypes, come back bit for
// bit however the bytes are cut; small ones share chunks.
func TestRoundTrip(t *testing.T) {
	big := ChunkBytes/4 + 3 // a float past a chunk
	vals := []Value{
		Float32("a", []int{2, 3}, floats(6)),
		Float32("empty", []int{0, 4}, nil),
		Int32("ids", []int{5}, []int32{1, -2, 3, math.MaxInt32, math.MinInt32}),
		Float32("big", []int{big}, floats(big)),
		Float32("nan", []int{2}, []float32{float32(math.NaN()), float32(math.Inf(-1))}),
	}
	for _, resplit := range []int{0, 7, 4097} {
		got, sent, err := pipe(t, vals, resplit)
		if err != nil {
			t.Fatal(err)
		}
		if resplit == 0 && sent != 2 {
			t.Errorf("%d chunks for 1 MiB + 64 bytes, want 2", sent)
		}
		for i, v := range vals {
			if len(got[i].F32) != len(v.F32) || len(got[i].I32) != len(v.I32) {
				t.Fatalf("resplit %d: tensor %s: %d/%d elements, want %d/%d", resplit, v.Meta.Name, len(got[i].F32), len(got[i].I32), len(v.F32), len(v.I32))
			}
			for j := range v.F32 {
				if math.Float32bits(got[i].F32[j]) != math.Float32bits(v.F32[j]) {
					t.Fatalf("resplit %d: %s[%d] = %v, want %v", resplit, v.Meta.Name, j, got[i].F32[j], v.F32[j])
				}
			}
			if !slices.Equal(got[i].I32, v.I32) {
				t.Fatalf("resplit %d: %s = %v, want %v", resplit, v.Meta.Name, got[i].I32, v.I32)
			}
		}
	}
}

func TestSendRefusesDataNotFillingItsShape(t *testing.T) {
	err := Send(func(*pb.Frame) error { return nil }, []Value{Float32("x", []int{2, 2}, floats(3))})
	if err == nil || !strings.Contains(err.Error(), "has 3 elements, the shape needs 4") {
		t.Fatalf("got %v", err)
	}
}

func TestCheckLimits(t *testing.T) {
	lim := Limits{MaxTensorBytes: 64, MaxTotalBytes: 100, MaxTensors: 3}
	meta := func(shape ...int64) *pb.TensorMeta {
		return &pb.TensorMeta{Name: "t", Shape: shape, Dtype: pb.DType_DTYPE_FLOAT32}
	}
	for _, c := range []struct {
		metas []*pb.TensorMeta
		want  string
	}{
		{[]*pb.TensorMeta{meta(17)}, "68 bytes, over the limit of 64"},
		{[]*pb.TensorMeta{meta(16), meta(16)}, "128 bytes, over the limit of 100"},
		{[]*pb.TensorMeta{meta(1), meta(1), meta(1), meta(1)}, "4 tensors exceed the limit of 3"},
		{[]*pb.TensorMeta{meta(math.MaxInt64, 2)}, "too large"},
		{[]*pb.TensorMeta{meta(-1)}, "negative"},
		{[]*pb.TensorMeta{{Shape: []int64{1}}}, "dtype DTYPE_UNSPECIFIED"},
		{[]*pb.TensorMeta{nil}, "no metadata"},
	} {
		if _, err := Check(c.metas, lim); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: %v, want %q", c.metas, err, c.want)
		}
	}
	if _, err := Check([]*pb.TensorMeta{meta(16), meta(0), meta(4, 2)}, lim); err != nil {
		t.Fatal(err)
	}
	if _, err := (Limits{MaxTensors: -1}).WithDefaults(); err == nil {
		t.Fatal("negative limits accepted")
	}
}

// FuzzRecv feeds Recv arbitrary declared shapes and chunks: it must
// answer an error or exactly the declared bytes, and never panic.
func FuzzRecv(f *testing.F) {
	f.Add(uint8(2), uint8(3), []byte{1, 2, 3, 4, 5, 6, 7, 8}, uint8(5))
	f.Add(uint8(0), uint8(9), []byte{}, uint8(1))
	f.Fuzz(func(t *testing.T, d0, d1 uint8, data []byte, cut uint8) {
		metas := []*pb.TensorMeta{
			{Name: "a", Shape: []int64{int64(d0)}, Dtype: pb.DType_DTYPE_FLOAT32},
			{Name: "b", Shape: []int64{int64(d1)}, Dtype: pb.DType_DTYPE_INT32},
		}
		lim, _ := Limits{MaxTensorBytes: 1024}.WithDefaults()
		sizes, err := Check(metas, lim)
		if err != nil {
			t.Fatal(err)
		}
		step := int(cut)%7 + 1
		off := 0
		vals, err := Recv(func() (*pb.Frame, error) {
			if off >= len(data) {
				return nil, io.EOF
			}
			end := min(off+step, len(data))
			c := data[off:end]
			off = end
			return &pb.Frame{Body: &pb.Frame_Chunk{Chunk: c}}, nil
		}, metas, sizes)
		want := 4 * (int(d0) + int(d1))
		if (err == nil) != (len(data) == want) {
			t.Fatalf("%d bytes for %d declared: %v", len(data), want, err)
		}
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v is not ErrMalformed", err)
			}
			return
		}
		if len(vals[0].F32) != int(d0) || len(vals[1].I32) != int(d1) {
			t.Fatalf("%d and %d elements, want %d and %d", len(vals[0].F32), len(vals[1].I32), d0, d1)
		}
	})
}

// TestStateRoundTrip: StateValues and ParseState are inverses, and a
// state out of the description's order is refused.
func TestStateRoundTrip(t *testing.T) {
	d := compute.Description{Params: []compute.ParamInfo{{Name: "w", Shape: []int{2, 2}}, {Name: "g", Shape: []int{3}}}}
	st := []compute.ParamState{
		{ParamInfo: d.Params[0], W: floats(4), M: floats(4), V: floats(4)},
		{ParamInfo: d.Params[1], W: floats(3)},
	}
	vals := StateValues(st)
	if len(vals) != 4 || vals[1].Meta.Name != "optim.m.w" || vals[2].Meta.Name != "optim.v.w" {
		t.Fatalf("state values %v", vals)
	}
	back, err := ParseState(d, vals)
	if err != nil {
		t.Fatal(err)
	}
	if len(back) != 2 || !slices.Equal(back[0].V, st[0].V) || back[1].M != nil {
		t.Fatalf("parsed %+v", back)
	}
	if _, err := ParseState(d, []Value{vals[3], vals[0], vals[1], vals[2]}); err == nil {
		t.Fatal("a state in another order accepted")
	}
	if _, err := ParseState(d, vals[:2]); err == nil || !strings.Contains(err.Error(), "optim.v.w") {
		t.Fatalf("a state without a second moment: %v", err)
	}
	if _, err := ParseState(d, append(vals, vals[3])); err == nil || !strings.Contains(err.Error(), "beyond") {
		t.Fatalf("a state with a tensor too many: %v", err)
	}
}

func TestOpName(t *testing.T) {
	if got := OpName(pb.Op_OP_BACKWARD_INPUT); got != "BackwardInput" {
		t.Fatalf("OpName = %q", got)
	}
}

// TestRegionBorrow: Borrow gives Get's values, with float32 tensors left
// in the region (a later write to it shows through) and int32 ones copied.
func TestRegionBorrow(t *testing.T) {
	r, err := CreateRegion(t.TempDir(), 1<<12)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	vals := []Value{
		{Meta: &pb.TensorMeta{Name: "x", Shape: []int64{2, 3}, Dtype: pb.DType_DTYPE_FLOAT32}, F32: []float32{1, -2, 3.5, 0, 5, 6}},
		{Meta: &pb.TensorMeta{Name: "ids", Shape: []int64{3}, Dtype: pb.DType_DTYPE_INT32}, I32: []int32{7, 8, 9}},
	}
	metas := []*pb.TensorMeta{vals[0].Meta, vals[1].Meta}
	lim, err := Limits{}.WithDefaults()
	if err != nil {
		t.Fatal(err)
	}
	sizes, err := Check(metas, lim)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Put(vals); err != nil {
		t.Fatal(err)
	}
	got, err := r.Get(metas, sizes)
	if err != nil {
		t.Fatal(err)
	}
	lent, err := r.Borrow(metas, sizes)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(lent[0].F32, got[0].F32) || !slices.Equal(lent[1].I32, got[1].I32) || !slices.Equal(got[0].F32, vals[0].F32) {
		t.Fatalf("Borrow gave %v %v, Get %v %v", lent[0].F32, lent[1].I32, got[0].F32, got[1].I32)
	}
	vals[0].F32[0], vals[1].I32[0] = 42, 42
	if err := r.Put(vals); err != nil {
		t.Fatal(err)
	}
	if lent[0].F32[0] != 42 || got[0].F32[0] != 1 {
		t.Errorf("after a write to the region the borrowed float is %v (want 42, in place) and the copied one %v (want 1)", lent[0].F32[0], got[0].F32[0])
	}
	if lent[1].I32[0] != 7 {
		t.Errorf("a borrowed int32 tensor changed with the region (%d): int32 inputs must be copied", lent[1].I32[0])
	}
}
