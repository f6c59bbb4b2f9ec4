package transport

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	pb "stagecoach/proto"
)

// Errors a receiver reports; wrap-compatible with errors.Is.
var (
	// ErrTooLarge: the tensor exceeds the receiver's MaxTensorBytes.
	ErrTooLarge = errors.New("tensor too large")
	// ErrMalformed: the stream breaks the chunking rules.
	ErrMalformed = errors.New("malformed tensor stream")
)

// Send streams one tensor to a peer: hdr (TotalBytes is set here) in the
// first chunk, then payload in slices of at most chunk bytes. It returns
// the receiver's verdict: when the receiver rejects the tensor, the send
// side of a gRPC client stream only sees io.EOF, so the real status is
// fetched with CloseAndRecv.
func Send(ctx context.Context, c pb.PeerClient, hdr *pb.TensorHeader, payload []byte, chunk int, opts ...grpc.CallOption) error {
	if chunk < 1 {
		chunk = DefaultChunkBytes
	}
	stream, err := c.SendTensor(ctx, opts...)
	if err != nil {
		return err
	}
	hdr.TotalBytes = int64(len(payload))
	first := true
	for off := 0; first || off < len(payload); first = false {
		end := min(off+chunk, len(payload))
		msg := &pb.TensorChunk{Data: payload[off:end]}
		if first {
			msg.Header = hdr
		}
		if err := stream.Send(msg); err != nil {
			if errors.Is(err, io.EOF) {
				_, err = stream.CloseAndRecv()
				if err == nil {
					err = errors.New("transport: receiver closed the stream early")
				}
			}
			return err
		}
		off = end
	}
	_, err = stream.CloseAndRecv()
	return err
}

// Payload is a received tensor's bytes as the chunks they arrived in,
// usually still in gRPC's receive buffers: the consumer decodes them once
// and calls Release, and no contiguous copy is ever made (or zeroed).
type Payload struct {
	chunks [][]byte
	held   []*rawChunk
}

// Chunks are the payload's pieces in order. They are valid until Release.
func (p *Payload) Chunks() [][]byte { return p.chunks }

// Len is the total byte count.
func (p *Payload) Len() int {
	n := 0
	for _, c := range p.chunks {
		n += len(c)
	}
	return n
}

// Bytes copies the payload into one slice.
func (p *Payload) Bytes() []byte {
	out := make([]byte, 0, p.Len())
	for _, c := range p.chunks {
		out = append(out, c...)
	}
	return out
}

// Release returns the receive buffers to gRPC's pool; the chunks must not
// be used afterwards. It is safe to call more than once.
func (p *Payload) Release() {
	for _, c := range p.held {
		c.release()
	}
	p.held, p.chunks = nil, nil
}

// usesTensorCodec reports whether the stream's sender chose the tensor
// codec (content-type application/grpc+stagecoach-tensor).
func usesTensorCodec(ctx context.Context) bool {
	md, _ := metadata.FromIncomingContext(ctx)
	for _, v := range md.Get("content-type") {
		if strings.HasSuffix(v, "+"+CodecName) {
			return true
		}
	}
	return false
}

// recvChunk reads the next chunk in whichever codec the sender used.
func recvChunk(stream pb.Peer_SendTensorServer, raw bool, p *Payload) (*pb.TensorHeader, [][]byte, error) {
	if raw {
		c := &rawChunk{}
		if err := stream.RecvMsg(c); err != nil {
			return nil, nil, err
		}
		if c.bufs != nil {
			p.held = append(p.held, c)
		}
		return c.header, c.data, nil
	}
	c, err := stream.Recv()
	if err != nil {
		return nil, nil, err
	}
	if len(c.GetData()) == 0 {
		return c.GetHeader(), nil, nil
	}
	return c.GetHeader(), [][]byte{c.GetData()}, nil
}

// Receive reads one tensor from a SendTensor stream. check vets the header
// before any payload is buffered, so a rejected or oversized tensor costs
// the receiver one chunk of memory at most. On error nothing needs
// releasing.
func Receive(stream pb.Peer_SendTensorServer, maxBytes int64, check func(*pb.TensorHeader) error) (_ *pb.TensorHeader, _ *Payload, err error) {
	p := &Payload{}
	defer func() {
		if err != nil {
			p.Release()
		}
	}()
	raw := usesTensorCodec(stream.Context())
	hdr, data, err := recvChunk(stream, raw, p)
	if err != nil {
		if errors.Is(err, io.EOF) {
			return nil, nil, fmt.Errorf("%w: empty stream", ErrMalformed)
		}
		return nil, nil, err
	}
	if hdr == nil {
		return nil, nil, fmt.Errorf("%w: first chunk has no header", ErrMalformed)
	}
	total := hdr.GetTotalBytes()
	if total < 0 {
		return nil, nil, fmt.Errorf("%w: negative total_bytes %d", ErrMalformed, total)
	}
	if total > maxBytes {
		return hdr, nil, fmt.Errorf("%w: %d bytes, limit %d", ErrTooLarge, total, maxBytes)
	}
	if check != nil {
		if err := check(hdr); err != nil {
			return hdr, nil, err
		}
	}
	var got int64
	for {
		for _, d := range data {
			if got += int64(len(d)); got > total {
				return hdr, nil, fmt.Errorf("%w: payload exceeds declared total_bytes %d", ErrMalformed, total)
			}
			p.chunks = append(p.chunks, d)
		}
		var h *pb.TensorHeader
		h, data, err = recvChunk(stream, raw, p)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return hdr, nil, err
		}
		if h != nil {
			return hdr, nil, fmt.Errorf("%w: header in a later chunk", ErrMalformed)
		}
	}
	if got != total {
		return hdr, nil, fmt.Errorf("%w: got %d of %d declared bytes", ErrMalformed, got, total)
	}
	return hdr, p, nil
}

// EncodeFloat32s is the payload form of a float32 tensor: little-endian
// IEEE 754 bits, so values cross the wire bit for bit.
func EncodeFloat32s(src []float32) []byte {
	out := make([]byte, 4*len(src))
	for i, v := range src {
		binary.LittleEndian.PutUint32(out[4*i:], math.Float32bits(v))
	}
	return out
}

// DecodeFloat32s is the inverse of EncodeFloat32s over a payload's chunks
// (a float may straddle two chunks).
func DecodeFloat32s(p *Payload) ([]float32, error) {
	n := p.Len()
	if n%4 != 0 {
		return nil, fmt.Errorf("%w: %d payload bytes is not a whole number of float32s", ErrMalformed, n)
	}
	out := make([]float32, n/4)
	var carry [4]byte
	k, i := 0, 0 // bytes in carry, next float
	for _, c := range p.chunks {
		for k > 0 && len(c) > 0 {
			carry[k] = c[0]
			c = c[1:]
			if k++; k == 4 {
				out[i] = math.Float32frombits(binary.LittleEndian.Uint32(carry[:]))
				i, k = i+1, 0
			}
		}
		if k > 0 {
			continue // the chunk ended inside a float
		}
		whole := len(c) &^ 3
		for j := 0; j < whole; j += 4 {
			out[i] = math.Float32frombits(binary.LittleEndian.Uint32(c[j:]))
			i++
		}
		k = copy(carry[:], c[whole:])
	}
	return out, nil
}
