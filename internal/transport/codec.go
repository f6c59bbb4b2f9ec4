package transport

import (
	"encoding/binary"
	"fmt"

	"google.golang.org/grpc/encoding"
	protocodec "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"

	pb "stagecoach/proto"
)

// CodecName is the gRPC content-subtype of the tensor codec. Clients opt
// in per call (grpc.CallContentSubtype); servers pick the codec from the
// request, so plain protobuf senders keep working.
const CodecName = "stagecoach-tensor"

// tensorCodec frames a TensorChunk as
//
//	flags (1 byte: 1 = header present) | uvarint header length | header (protobuf) | payload
//
// so the payload is handed to gRPC by reference when sending (protobuf
// would copy it into the marshalled message), and on receive it is not
// copied at all: Receive decodes into a rawChunk that keeps gRPC's receive
// buffers (protobuf copies twice: joining the HTTP/2 frames, then into the
// field). Every other message is plain protobuf.
type tensorCodec struct{}

func init() { encoding.RegisterCodecV2(tensorCodec{}) }

func (tensorCodec) Name() string { return CodecName }

var protoV2 = encoding.GetCodecV2(protocodec.Name)

// maxHeaderBytes bounds a chunk's header on decode.
const maxHeaderBytes = 64 << 10

func (tensorCodec) Marshal(v any) (mem.BufferSlice, error) {
	c, ok := v.(*pb.TensorChunk)
	if !ok {
		return protoV2.Marshal(v)
	}
	var hdr []byte
	var flags byte
	if c.Header != nil {
		var err error
		if hdr, err = proto.Marshal(c.Header); err != nil {
			return nil, err
		}
		flags = 1
	}
	prefix := make([]byte, 1, 1+binary.MaxVarintLen64+len(hdr))
	prefix[0] = flags
	prefix = binary.AppendUvarint(prefix, uint64(len(hdr)))
	prefix = append(prefix, hdr...)
	out := mem.BufferSlice{mem.SliceBuffer(prefix)}
	if len(c.Data) > 0 {
		out = append(out, mem.SliceBuffer(c.Data))
	}
	return out, nil
}

func (tensorCodec) Unmarshal(data mem.BufferSlice, v any) error {
	switch c := v.(type) {
	case *rawChunk:
		return c.decode(data)
	case *pb.TensorChunk:
		return decodeChunk(data.Materialize(), c)
	}
	return protoV2.Unmarshal(data, v)
}

// rawChunk is a received chunk whose payload stays in gRPC's buffers: data
// views bufs, which the chunk references until release.
type rawChunk struct {
	header *pb.TensorHeader
	data   [][]byte
	bufs   mem.BufferSlice
}

func (c *rawChunk) decode(in mem.BufferSlice) error {
	var pre [1 + binary.MaxVarintLen64]byte
	np := copyAt(in, 0, pre[:])
	if np < 2 || pre[0] > 1 {
		return fmt.Errorf("%w: bad chunk frame", ErrMalformed)
	}
	n, k := binary.Uvarint(pre[1:np])
	total := in.Len()
	if k <= 0 || n > maxHeaderBytes || uint64(total-1-k) < n {
		return fmt.Errorf("%w: bad chunk header length", ErrMalformed)
	}
	*c = rawChunk{}
	if pre[0] == 1 {
		hb := make([]byte, n)
		copyAt(in, 1+k, hb)
		c.header = &pb.TensorHeader{}
		if err := proto.Unmarshal(hb, c.header); err != nil {
			return fmt.Errorf("%w: chunk header: %v", ErrMalformed, err)
		}
	} else if n != 0 {
		return fmt.Errorf("%w: header bytes without a header flag", ErrMalformed)
	}
	skip := 1 + k + int(n)
	for _, b := range in {
		d := b.ReadOnlyData()
		if skip >= len(d) {
			skip -= len(d)
			continue
		}
		c.data = append(c.data, d[skip:])
		skip = 0
	}
	if len(c.data) > 0 {
		in.Ref() // gRPC frees in when Unmarshal returns; keep it alive
		c.bufs = in
	}
	return nil
}

func (c *rawChunk) release() {
	c.bufs.Free()
	c.bufs, c.data = nil, nil
}

// copyAt copies from in, starting off bytes in, into dst.
func copyAt(in mem.BufferSlice, off int, dst []byte) int {
	n := 0
	for _, b := range in {
		d := b.ReadOnlyData()
		if off >= len(d) {
			off -= len(d)
			continue
		}
		n += copy(dst[n:], d[off:])
		off = 0
		if n == len(dst) {
			break
		}
	}
	return n
}

// decodeChunk parses the codec's frame; c.Data aliases b.
func decodeChunk(b []byte, c *pb.TensorChunk) error {
	if len(b) < 2 || b[0] > 1 {
		return fmt.Errorf("%w: bad chunk frame", ErrMalformed)
	}
	n, k := binary.Uvarint(b[1:])
	if k <= 0 || n > maxHeaderBytes || uint64(len(b)-1-k) < n {
		return fmt.Errorf("%w: bad chunk header length", ErrMalformed)
	}
	rest := b[1+k:]
	c.Reset()
	if b[0] == 1 {
		c.Header = &pb.TensorHeader{}
		if err := proto.Unmarshal(rest[:n], c.Header); err != nil {
			return fmt.Errorf("%w: chunk header: %v", ErrMalformed, err)
		}
	} else if n != 0 {
		return fmt.Errorf("%w: header bytes without a header flag", ErrMalformed)
	}
	if len(rest[n:]) > 0 {
		c.Data = rest[n:]
	}
	return nil
}
