// Package wirebuf holds the sizes of the tensor transport's buffers, so
// the transport that sets them and the cost model that counts a worker's
// memory share one definition without the cost model linking gRPC.
package wirebuf

const (
	// ChunkBytes is the largest payload slice per stream message.
	ChunkBytes = 1 << 20
	// BufferBytes is gRPC's socket read and write buffer per connection
	// end (DESIGN 7a: 1 MiB beats gRPC's 32 KiB default on bulk streams).
	BufferBytes = 1 << 20
)

// PooledBytes is what a worker's gRPC buffers of bufferBytes each take in
// its heap while it exchanges tensors: one read and one write buffer.
// gRPC takes a connection's read buffer when the socket has data and its
// write buffer when a frame is queued, and returns both to one shared
// pool when done, so a worker that reads and writes holds two however
// many peers it has (a heap profile of every stage of a 4-stage 1F1B run
// shows exactly two 1 MiB buffers at each worker's peak).
func PooledBytes(bufferBytes int) int64 {
	if bufferBytes <= 0 {
		return 0
	}
	return 2 * int64(bufferBytes)
}

// MessageBytes is gRPC's buffer for one received stream message carrying
// a tensor of tensorBytes (a chunk of at most chunkBytes): the wire bytes
// it decodes the tensor from, returned to gRPC's pool after decoding.
func MessageBytes(tensorBytes, chunkBytes int64) int64 {
	return max(min(tensorBytes, chunkBytes), 0)
}
