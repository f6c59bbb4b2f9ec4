// Package wire moves the tensors of the compute protocol (see
// proto/compute/compute.proto): the bytes of a Request's inputs or a
// Response's outputs, concatenated in order and cut into chunk Frames of
// at most ChunkBytes. Both ends of the protocol (compute/serve and
// compute/remote) use it, so they read and write tensors the same way and
// check declared sizes against the same kind of Limits before allocating.
package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
	"unsafe"

	"stagecoach/compute"
	pb "stagecoach/proto/compute"
)

// ChunkBytes is the largest chunk a Frame carries.
const ChunkBytes = 1 << 20

// MaxMessageBytes bounds one gRPC message of the protocol: a chunk, or a
// Request or Response with its tensor metadata (State of a large stage
// names tens of thousands of tensors).
const MaxMessageBytes = 16 << 20

// Flow control: a stream or connection may have this many bytes in
// flight before the receiver acknowledges them. gRPC's default window
// (64 KiB, grown by estimate) makes every tensor call wait for round
// trips over a socket that has none to speak of; a window above the
// largest chunk lets a tensor stream without stalling.
const (
	StreamWindow = 16 << 20
	ConnWindow   = 64 << 20
	// SocketBuffer sizes the reads and writes on the connection.
	SocketBuffer = 1 << 20
)

// MaxRank bounds a tensor's rank.
const MaxRank = 8

// Limits bound what one end accepts from the other before it allocates.
// Zero fields take the defaults.
type Limits struct {
	// MaxTensorBytes bounds one tensor (default 4 GiB: the flat gradient
	// of the largest model model.Limits allows by default is 1 GiB, a
	// microbatch's hidden state far less).
	MaxTensorBytes int64
	// MaxTotalBytes bounds all the tensors of one message (default 16
	// GiB: a stage's State is its weights and two moments).
	MaxTotalBytes int64
	// MaxTensors bounds the tensors of one message (default 1<<16).
	MaxTensors int
}

// Defaults of Limits.
const (
	DefaultMaxTensorBytes = 4 << 30
	DefaultMaxTotalBytes  = 16 << 30
	DefaultMaxTensors     = 1 << 16
)

// WithDefaults fills zero fields and refuses negative ones.
func (l Limits) WithDefaults() (Limits, error) {
	if l.MaxTensorBytes < 0 || l.MaxTotalBytes < 0 || l.MaxTensors < 0 {
		return l, fmt.Errorf("compute limits: negative (max tensor bytes %d, max total bytes %d, max tensors %d)", l.MaxTensorBytes, l.MaxTotalBytes, l.MaxTensors)
	}
	if l.MaxTensorBytes == 0 {
		l.MaxTensorBytes = DefaultMaxTensorBytes
	}
	if l.MaxTotalBytes == 0 {
		l.MaxTotalBytes = DefaultMaxTotalBytes
	}
	if l.MaxTensors == 0 {
		l.MaxTensors = DefaultMaxTensors
	}
	return l, nil
}

// Value is one tensor received or to be sent: float32 data (F32) or int32
// data (I32), as Meta's dtype says.
type Value struct {
	Meta *pb.TensorMeta
	F32  []float32
	I32  []int32
}

// Shape is the value's shape as ints.
func (v Value) Shape() []int {
	s := make([]int, len(v.Meta.GetShape()))
	for i, d := range v.Meta.GetShape() {
		s[i] = int(d)
	}
	return s
}

// Float32 is a float32 value named name with shape.
func Float32(name string, shape []int, data []float32) Value {
	return Value{Meta: Meta(name, pb.DType_DTYPE_FLOAT32, shape), F32: data}
}

// Int32 is an int32 value named name with shape.
func Int32(name string, shape []int, data []int32) Value {
	return Value{Meta: Meta(name, pb.DType_DTYPE_INT32, shape), I32: data}
}

// Meta describes a tensor.
func Meta(name string, dt pb.DType, shape []int) *pb.TensorMeta {
	s := make([]int64, len(shape))
	for i, d := range shape {
		s[i] = int64(d)
	}
	return &pb.TensorMeta{Name: name, Shape: s, Dtype: dt}
}

// Elems is the element count of shape, or an error when a dimension is
// negative or the count overflows.
func Elems(shape []int64) (int64, error) {
	n := int64(1)
	for _, d := range shape {
		if d < 0 {
			return 0, fmt.Errorf("negative dimension in shape %v", shape)
		}
		if d > 0 && n > math.MaxInt64/4/d {
			return 0, fmt.Errorf("shape %v is too large", shape)
		}
		n *= d
	}
	return n, nil
}

// Check validates metas against lim (which must have its defaults):
// the count, each rank, dtype and size, and the total; it returns the
// byte size of each tensor.
func Check(metas []*pb.TensorMeta, lim Limits) ([]int64, error) {
	if len(metas) > lim.MaxTensors {
		return nil, fmt.Errorf("%d tensors exceed the limit of %d", len(metas), lim.MaxTensors)
	}
	sizes := make([]int64, len(metas))
	var total int64
	for i, m := range metas {
		if m == nil {
			return nil, fmt.Errorf("tensor %d has no metadata", i)
		}
		if len(m.Shape) > MaxRank {
			return nil, fmt.Errorf("tensor %d (%q) has rank %d, over the limit of %d", i, m.Name, len(m.Shape), MaxRank)
		}
		if m.Dtype != pb.DType_DTYPE_FLOAT32 && m.Dtype != pb.DType_DTYPE_INT32 {
			return nil, fmt.Errorf("tensor %d (%q) has dtype %v; float32 and int32 are supported", i, m.Name, m.Dtype)
		}
		n, err := Elems(m.Shape)
		if err != nil {
			return nil, fmt.Errorf("tensor %d (%q): %v", i, m.Name, err)
		}
		sizes[i] = 4 * n
		if sizes[i] > lim.MaxTensorBytes {
			return nil, fmt.Errorf("tensor %d (%q) of shape %v is %d bytes, over the limit of %d", i, m.Name, m.Shape, sizes[i], lim.MaxTensorBytes)
		}
		if total += sizes[i]; total > lim.MaxTotalBytes {
			return nil, fmt.Errorf("tensors up to %d (%q) are %d bytes, over the limit of %d per message", i, m.Name, total, lim.MaxTotalBytes)
		}
	}
	return sizes, nil
}

// littleEndian says whether this machine stores words as the wire does,
// so that tensor memory can be sent and filled as bytes directly.
var littleEndian = binary.NativeEndian.Uint16([]byte{1, 0}) == 1

// asBytes views 4-byte elements as bytes (little-endian machines only).
func asBytes[T float32 | int32](s []T) []byte {
	if len(s) == 0 {
		return nil
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(&s[0])), 4*len(s))
}

// encode is v's wire bytes.
func (v Value) encode() []byte {
	if littleEndian {
		if v.Meta.Dtype == pb.DType_DTYPE_INT32 {
			return asBytes(v.I32)
		}
		return asBytes(v.F32)
	}
	var out []byte
	if v.Meta.Dtype == pb.DType_DTYPE_INT32 {
		out = make([]byte, 0, 4*len(v.I32))
		for _, x := range v.I32 {
			out = binary.LittleEndian.AppendUint32(out, uint32(x))
		}
		return out
	}
	out = make([]byte, 0, 4*len(v.F32))
	for _, x := range v.F32 {
		out = binary.LittleEndian.AppendUint32(out, math.Float32bits(x))
	}
	return out
}

// elems is the element count of v's shape, checked against its data.
func (v Value) elems() (int64, error) {
	n, err := Elems(v.Meta.GetShape())
	if err != nil {
		return 0, fmt.Errorf("tensor %q: %v", v.Meta.GetName(), err)
	}
	have := len(v.F32)
	if v.Meta.GetDtype() == pb.DType_DTYPE_INT32 {
		have = len(v.I32)
	}
	if int64(have) != n {
		return 0, fmt.Errorf("tensor %q of shape %v has %d elements, the shape needs %d", v.Meta.GetName(), v.Meta.GetShape(), have, n)
	}
	return n, nil
}

// Send sends the bytes of vals in order as chunk Frames of at most
// ChunkBytes: a large tensor's bytes go out in place, small ones are
// packed together. Each value's data must match its shape.
func Send(send func(*pb.Frame) error, vals []Value) error {
	var pend []byte
	flush := func() error {
		if len(pend) == 0 {
			return nil
		}
		// gRPC marshals the frame before Send returns, so pend is reused.
		err := send(&pb.Frame{Body: &pb.Frame_Chunk{Chunk: pend}})
		pend = pend[:0]
		return err
	}
	var total int64 // bytes to send: pend need not be larger
	for _, v := range vals {
		n, err := v.elems()
		if err != nil {
			return err
		}
		total += 4 * n
	}
	for i, v := range vals {
		b := v.encode()
		for len(b) > 0 {
			// Whole chunks, and the last tensor's end, go out in place.
			if len(pend) == 0 && (len(b) >= ChunkBytes || i == len(vals)-1) {
				k := min(len(b), ChunkBytes)
				if err := send(&pb.Frame{Body: &pb.Frame_Chunk{Chunk: b[:k]}}); err != nil {
					return err
				}
				b = b[k:]
				continue
			}
			if pend == nil {
				pend = make([]byte, 0, min(total, ChunkBytes))
			}
			k := min(len(b), ChunkBytes-len(pend))
			pend = append(pend, b[:k]...)
			b = b[k:]
			if len(pend) == ChunkBytes {
				if err := flush(); err != nil {
					return err
				}
			}
		}
	}
	return flush()
}

// ErrMalformed marks a stream that breaks the protocol's framing.
var ErrMalformed = errors.New("malformed compute stream")

// Recv reads the bytes of the tensors metas declares (already passed
// through Check, which gave sizes) from chunk Frames, and then the end of
// the stream (recv returning io.EOF). Memory is allocated per tensor only
// after Check accepted its size.
func Recv(recv func() (*pb.Frame, error), metas []*pb.TensorMeta, sizes []int64) ([]Value, error) {
	return RecvInto(recv, metas, sizes, nil)
}

// Alloc returns n float32s for a received tensor to be written into (the
// receiver overwrites every one): a caller's reused buffers. nil
// allocates fresh memory.
type Alloc func(n int) []float32

func (a Alloc) f32(n int) []float32 {
	if a == nil {
		return make([]float32, n)
	}
	return a(n)
}

// RecvInto is Recv with float32 tensors received into memory from alloc.
func RecvInto(recv func() (*pb.Frame, error), metas []*pb.TensorMeta, sizes []int64, alloc Alloc) ([]Value, error) {
	vals := make([]Value, len(metas))
	bufs := make([][]byte, len(metas))
	for i, m := range metas {
		vals[i].Meta = m
		n := int(sizes[i] / 4)
		if m.Dtype == pb.DType_DTYPE_INT32 {
			vals[i].I32 = make([]int32, n)
			bufs[i] = asBytes(vals[i].I32)
		} else {
			vals[i].F32 = alloc.f32(n)
			bufs[i] = asBytes(vals[i].F32)
		}
		if !littleEndian && n > 0 {
			bufs[i] = make([]byte, sizes[i])
		}
	}
	ti, off := 0, 0 // tensor being filled, bytes of it filled
	skip := func() {
		for ti < len(bufs) && off == len(bufs[ti]) {
			ti, off = ti+1, 0
		}
	}
	skip()
	for {
		f, err := recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, err
		}
		c, ok := f.GetBody().(*pb.Frame_Chunk)
		if !ok {
			return nil, fmt.Errorf("%w: a %T frame where tensor bytes or the end of the stream belong", ErrMalformed, f.GetBody())
		}
		b := c.Chunk
		if len(b) > ChunkBytes {
			return nil, fmt.Errorf("%w: a chunk of %d bytes, over the limit of %d", ErrMalformed, len(b), ChunkBytes)
		}
		for len(b) > 0 {
			if ti == len(bufs) {
				return nil, fmt.Errorf("%w: more tensor bytes than the %d tensors declared", ErrMalformed, len(metas))
			}
			k := copy(bufs[ti][off:], b)
			b, off = b[k:], off+k
			skip()
		}
	}
	if ti < len(bufs) {
		return nil, fmt.Errorf("%w: the stream ended in tensor %d (%q) after %d of its %d bytes", ErrMalformed, ti, metas[ti].Name, off, len(bufs[ti]))
	}
	if !littleEndian {
		for i := range vals {
			for j := range vals[i].F32 {
				vals[i].F32[j] = math.Float32frombits(binary.LittleEndian.Uint32(bufs[i][4*j:]))
			}
			for j := range vals[i].I32 {
				vals[i].I32[j] = int32(binary.LittleEndian.Uint32(bufs[i][4*j:]))
			}
		}
	}
	return vals, nil
}

// Addr splits a listen or dial address: "unix:///path" (or "unix:path")
// is a Unix socket, anything else host:port over TCP. It returns the
// network, the address for net.Listen/Dial and the gRPC target.
func Addr(addr string) (network, address, target string, err error) {
	switch {
	case addr == "":
		return "", "", "", errors.New("empty address: want unix:///path or host:port")
	case len(addr) > 7 && addr[:7] == "unix://":
		p := addr[7:]
		if p == "" || p[0] != '/' {
			return "", "", "", fmt.Errorf("address %q: unix:// needs an absolute path (unix:///path)", addr)
		}
		return "unix", p, "unix://" + p, nil
	case len(addr) > 5 && addr[:5] == "unix:":
		p := addr[5:]
		return "unix", p, "unix:" + p, nil
	}
	return "tcp", addr, "passthrough:///" + addr, nil
}

// OpName is op as the Stage method it stands for: OP_BACKWARD_INPUT is
// "BackwardInput".
func OpName(op pb.Op) string {
	var b strings.Builder
	for _, w := range strings.Split(strings.TrimPrefix(op.String(), "OP_"), "_") {
		if w != "" {
			b.WriteString(w[:1] + strings.ToLower(w[1:]))
		}
	}
	return b.String()
}

// Names of the optimizer moments of parameter name in State.
const (
	MomentM = "optim.m."
	MomentV = "optim.v."
)

// StateValues are states as State's outputs: per parameter its weights,
// then its moments when it has them.
func StateValues(states []compute.ParamState) []Value {
	var out []Value
	for _, st := range states {
		out = append(out, Float32(st.Name, st.Shape, st.W))
		if len(st.M) > 0 || len(st.V) > 0 {
			out = append(out, Float32(MomentM+st.Name, st.Shape, st.M), Float32(MomentV+st.Name, st.Shape, st.V))
		}
	}
	return out
}

// ParseState reads State's tensors back into parameter states of the
// stage d describes: names and shapes must follow d.Params, each
// parameter with both moments or neither.
func ParseState(d compute.Description, vals []Value) ([]compute.ParamState, error) {
	out := make([]compute.ParamState, 0, len(d.Params))
	i := 0
	for _, p := range d.Params {
		if i >= len(vals) {
			return nil, fmt.Errorf("state ends before parameter %q (%d tensors)", p.Name, len(vals))
		}
		get := func(name string) ([]float32, error) {
			v := vals[i]
			if v.Meta.GetName() != name {
				return nil, fmt.Errorf("state tensor %d is %q, want %q", i, v.Meta.GetName(), name)
			}
			if !slices.Equal(v.Shape(), p.Shape) {
				return nil, fmt.Errorf("state tensor %q has shape %v, the parameter %v", name, v.Meta.GetShape(), p.Shape)
			}
			if v.Meta.GetDtype() != pb.DType_DTYPE_FLOAT32 {
				return nil, fmt.Errorf("state tensor %q is %v, want float32", name, v.Meta.GetDtype())
			}
			i++
			return v.F32, nil
		}
		w, err := get(p.Name)
		if err != nil {
			return nil, err
		}
		ps := compute.ParamState{ParamInfo: p, W: w}
		if i < len(vals) && vals[i].Meta.GetName() == MomentM+p.Name {
			if ps.M, err = get(MomentM + p.Name); err != nil {
				return nil, err
			}
			if i >= len(vals) {
				return nil, fmt.Errorf("state ends before %q", MomentV+p.Name)
			}
			if ps.V, err = get(MomentV + p.Name); err != nil {
				return nil, err
			}
		}
		out = append(out, ps)
	}
	if i != len(vals) {
		return nil, fmt.Errorf("state has %d tensors beyond the stage's %d parameters (the first is %q)", len(vals)-i, len(d.Params), vals[i].Meta.GetName())
	}
	return out, nil
}
