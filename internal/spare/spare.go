// Package spare keeps float32 buffers their users have handed back, for
// the next request that fits: memory already written once is reused
// instead of fresh memory, whose first writes fault its pages in (10-25
// µs a page on the VMs the figures in docs/ come from).
package spare

import "sync"

// Buffers holds at most Max buffers. The zero value holds none; it is
// safe for concurrent use.
type Buffers struct {
	Max int

	mu   sync.Mutex
	bufs [][]float32
}

// Put hands b back. Its user must not touch it afterwards.
func (s *Buffers) Put(b []float32) {
	if cap(b) == 0 {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.bufs) < s.Max {
		s.bufs = append(s.bufs, b[:cap(b)])
	}
}

// Get returns n floats: a buffer handed back with room for them, holding
// whatever was last written there, else fresh zeroed memory.
func (s *Buffers) Get(n int) []float32 {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, b := range s.bufs {
		if cap(b) >= n {
			s.bufs[i] = s.bufs[len(s.bufs)-1]
			s.bufs = s.bufs[:len(s.bufs)-1]
			return b[:n]
		}
	}
	return make([]float32, n)
}

// Len is the number of buffers held.
func (s *Buffers) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.bufs)
}
