package spare

import "testing"

// TestBuffers: at most Max buffers are kept, none without capacity; Get
// takes one that fits and leaves the others, and allocates otherwise.
func TestBuffers(t *testing.T) {
	s := Buffers{Max: 2}
	s.Put(nil)
	small, large := make([]float32, 4), make([]float32, 8)
	large[0] = 7
	s.Put(small)
	s.Put(large[:3]) // the whole capacity is kept
	s.Put(make([]float32, 16))
	if s.Len() != 2 {
		t.Fatalf("%d buffers held, want 2", s.Len())
	}
	got := s.Get(6)
	if len(got) != 6 || &got[0] != &large[0] || got[0] != 7 {
		t.Fatalf("Get(6) = len %d, not the 8-float buffer as it was left", len(got))
	}
	if got := s.Get(6); len(got) != 6 || got[0] != 0 || s.Len() != 1 {
		t.Fatalf("Get(6) with only a 4-float buffer: len %d, %d held", len(got), s.Len())
	}
	if got := s.Get(4); &got[0] != &small[0] || s.Len() != 0 {
		t.Fatal("Get(4) did not take the 4-float buffer")
	}
}
