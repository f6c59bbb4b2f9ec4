package transport

import (
	"bytes"
	"encoding/binary"
	"testing"

	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"

	pb "stagecoach/proto"
)

// FuzzChunkDecoders feeds arbitrary frames to both decoders of the tensor
// codec (contiguous and zero-copy over split buffers): they must agree,
// never panic, and round-trip what Marshal produced.
func FuzzChunkDecoders(f *testing.F) {
	enc := func(c *pb.TensorChunk) []byte {
		bs, err := tensorCodec{}.Marshal(c)
		if err != nil {
			f.Fatal(err)
		}
		return bs.Materialize()
	}
	f.Add(enc(&pb.TensorChunk{Header: &pb.TensorHeader{Iteration: 3, Shape: []int32{2, 3}, TotalBytes: 24}, Data: []byte{1, 2, 3}}), 1)
	f.Add(enc(&pb.TensorChunk{Data: bytes.Repeat([]byte{7}, 100)}), 7)
	f.Add([]byte{1, 0xff, 0xff, 0xff, 0xff, 0x0f}, 2)
	f.Add([]byte{0, 1, 9}, 1)
	f.Add([]byte{2, 0}, 1)
	f.Fuzz(func(t *testing.T, frame []byte, split int) {
		var a pb.TensorChunk
		errA := decodeChunk(append([]byte(nil), frame...), &a)
		var in mem.BufferSlice
		step := max(1, split%17)
		for i := 0; i < len(frame); i += step {
			in = append(in, mem.SliceBuffer(frame[i:min(i+step, len(frame))]))
		}
		var b rawChunk
		errB := b.decode(in)
		if (errA == nil) != (errB == nil) {
			t.Fatalf("decoders disagree: %v vs %v", errA, errB)
		}
		if errA != nil {
			return
		}
		var joined []byte
		for _, d := range b.data {
			joined = append(joined, d...)
		}
		if !bytes.Equal(joined, a.Data) || !proto.Equal(a.Header, b.header) {
			t.Fatalf("decoders disagree on the content")
		}
		var c pb.TensorChunk
		if err := decodeChunk(enc(&a), &c); err != nil || !bytes.Equal(c.Data, a.Data) || !proto.Equal(c.Header, a.Header) {
			t.Fatalf("re-encoded chunk does not decode to itself: %v", err)
		}
	})
}

// FuzzDecodeFloat32s checks the chunked decoder against a plain one for
// any split of the payload.
func FuzzDecodeFloat32s(f *testing.F) {
	f.Add([]byte{0, 0, 128, 63, 0, 0, 0, 64}, 3)
	f.Add([]byte{1, 2, 3}, 1)
	f.Fuzz(func(t *testing.T, b []byte, split int) {
		var p Payload
		step := max(1, split%9)
		for i := 0; i < len(b); i += step {
			p.chunks = append(p.chunks, b[i:min(i+step, len(b))])
		}
		got, err := DecodeFloat32s(&p)
		if len(b)%4 != 0 {
			if err == nil {
				t.Fatal("ragged payload accepted")
			}
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		for i := range got {
			if want := binary.LittleEndian.Uint32(b[4*i:]); f32bits(got[i]) != want {
				t.Fatalf("float %d: %x, want %x", i, f32bits(got[i]), want)
			}
		}
	})
}
