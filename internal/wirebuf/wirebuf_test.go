package wirebuf

import "testing"

func TestSizes(t *testing.T) {
	for _, c := range []struct {
		name      string
		got, want int64
	}{
		{"PooledBytes(1 MiB)", PooledBytes(BufferBytes), 2 << 20}, // one read, one write buffer
		{"PooledBytes(0)", PooledBytes(0), 0},                     // buffering off
		{"MessageBytes(256 KiB)", MessageBytes(256<<10, ChunkBytes), 256 << 10},
		{"MessageBytes(4 MiB)", MessageBytes(4<<20, ChunkBytes), ChunkBytes}, // one chunk at a time
		{"MessageBytes(-1)", MessageBytes(-1, ChunkBytes), 0},
	} {
		if c.got != c.want {
			t.Errorf("%s = %d, want %d", c.name, c.got, c.want)
		}
	}
}
