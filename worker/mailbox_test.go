package worker

import (
	"context"
	"errors"
	"testing"
	"time"

	pb "stagecoach/proto"
)

func tensorOf(n int, mb int32) arrival {
	return arrival{hdr: &pb.TensorHeader{Microbatch: mb}, data: make([]float32, n)}
}

// A full mailbox blocks the receiving stream (back-pressure) until the
// machine goroutine takes something; arrivals keep their order.
func TestMailboxBackPressure(t *testing.T) {
	m := newMailbox(400) // bytes: room for one 100-float tensor
	ctx := context.Background()
	s := slot{1, 1}
	if err := m.put(ctx, s, tensorOf(100, 0)); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- m.put(ctx, s, tensorOf(100, 1)) }()
	select {
	case err := <-done:
		t.Fatalf("put into a full mailbox returned at once (%v)", err)
	case <-time.After(50 * time.Millisecond):
	}
	a, err := m.take(ctx, s)
	if err != nil || a.hdr.Microbatch != 0 {
		t.Fatalf("take: %v %v", a.hdr, err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if a, _ := m.take(ctx, s); a.hdr.Microbatch != 1 {
		t.Fatalf("second take got microbatch %d", a.hdr.Microbatch)
	}
	// A lone tensor larger than the bound is admitted: progress first.
	if err := m.put(ctx, s, tensorOf(1000, 2)); err != nil {
		t.Fatal(err)
	}
}

func TestMailboxSlotsAndPoison(t *testing.T) {
	m := newMailbox(1 << 20)
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_ = m.put(ctx, slot{1, 1}, tensorOf(1, 0))
	_ = m.put(ctx, slot{1, 2}, tensorOf(1, 1)) // a peer running ahead
	m.dropBefore(slot{1, 2})
	if a, err := m.take(ctx, slot{1, 2}); err != nil || a.hdr.Microbatch != 1 {
		t.Fatalf("next iteration's tensor lost: %v", err)
	}
	if m.used != 0 {
		t.Errorf("%d bytes still accounted after drop and take", m.used)
	}
	bad := errors.New("bad tensor")
	m.fail(slot{1, 2}, bad)
	if _, err := m.take(ctx, slot{1, 2}); !errors.Is(err, bad) {
		t.Fatalf("poisoned slot: got %v", err)
	}
	short, cancelShort := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancelShort()
	if _, err := m.take(short, slot{1, 3}); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("empty slot: got %v", err)
	}
}
