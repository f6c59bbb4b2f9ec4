package transport

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"

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
func Send(ctx context.Context, c pb.PeerClient, hdr *pb.TensorHeader, payload []byte, chunk int) error {
	if chunk < 1 {
		chunk = DefaultChunkBytes
	}
	stream, err := c.SendTensor(ctx)
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

// Receive reads one tensor from a SendTensor stream. check vets the header
// before any payload is buffered, so a rejected or oversized tensor costs
// the receiver one chunk of memory at most.
func Receive(stream pb.Peer_SendTensorServer, maxBytes int64, check func(*pb.TensorHeader) error) (*pb.TensorHeader, []byte, error) {
	c, err := stream.Recv()
	if err != nil {
		if errors.Is(err, io.EOF) {
			return nil, nil, fmt.Errorf("%w: empty stream", ErrMalformed)
		}
		return nil, nil, err
	}
	hdr := c.GetHeader()
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
	buf := make([]byte, 0, total)
	for {
		if int64(len(buf)+len(c.GetData())) > total {
			return hdr, nil, fmt.Errorf("%w: payload exceeds declared total_bytes %d", ErrMalformed, total)
		}
		buf = append(buf, c.GetData()...)
		c, err = stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return hdr, nil, err
		}
		if c.GetHeader() != nil {
			return hdr, nil, fmt.Errorf("%w: header in a later chunk", ErrMalformed)
		}
	}
	if int64(len(buf)) != total {
		return hdr, nil, fmt.Errorf("%w: got %d of %d declared bytes", ErrMalformed, len(buf), total)
	}
	return hdr, buf, nil
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

// DecodeFloat32s is the inverse of EncodeFloat32s.
func DecodeFloat32s(b []byte) ([]float32, error) {
	if len(b)%4 != 0 {
		return nil, fmt.Errorf("%w: %d payload bytes is not a whole number of float32s", ErrMalformed, len(b))
	}
	out := make([]float32, len(b)/4)
	for i := range out {
		out[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
	}
	return out, nil
}
