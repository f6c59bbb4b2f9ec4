package worker

import (
	"context"
	"errors"
	"testing"
	"time"

	pb "stagecoach/proto"
)

func limits(bytes int64) mailboxLimits {
	return mailboxLimits{bytes: bytes, futureBytes: 1000, futureTensors: 2, peerBytes: 1 << 20, peerStreams: 2}
}

// deliver reserves and queues an n-float tensor from peer for s.
func deliver(ctx context.Context, m *mailbox, s slot, peer string, n int, mb int32, future bool) error {
	t := ticket{peer: peer, bytes: 4 * int64(n), future: future}
	if err := m.reserve(ctx, t); err != nil {
		return err
	}
	m.put(s, arrival{hdr: &pb.TensorHeader{Microbatch: mb}, data: make([]float32, n), t: t})
	return nil
}

// A full mailbox blocks a current-epoch tensor's reservation
// (back-pressure) until the machine goroutine takes something; arrivals
// keep their order.
func TestMailboxBackPressure(t *testing.T) {
	m := newMailbox(limits(400)) // bytes: room for one 100-float tensor
	ctx := context.Background()
	s := slot{1, 1}
	if err := deliver(ctx, m, s, "p", 100, 0, false); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- deliver(ctx, m, s, "p", 100, 1, false) }()
	select {
	case err := <-done:
		t.Fatalf("reservation in a full mailbox returned at once (%v)", err)
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
	if err := deliver(ctx, m, s, "p", 1000, 2, false); err != nil {
		t.Fatal(err)
	}
}

func TestMailboxSlots(t *testing.T) {
	m := newMailbox(limits(1 << 20))
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_ = deliver(ctx, m, slot{1, 1}, "p", 1, 0, false)
	_ = deliver(ctx, m, slot{1, 2}, "p", 1, 1, false) // a peer running ahead
	m.dropBefore(slot{1, 2})
	if a, err := m.take(ctx, slot{1, 2}); err != nil || a.hdr.Microbatch != 1 {
		t.Fatalf("next iteration's tensor lost: %v", err)
	}
	if used, _, _ := m.held(); used != 0 || len(m.peers) != 0 {
		t.Errorf("%d bytes, %d peers still accounted after drop and take", used, len(m.peers))
	}
	short, cancelShort := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancelShort()
	if _, err := m.take(short, slot{1, 3}); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("empty slot: got %v", err)
	}
}

// Next-epoch tensors are refused, not waited for, past their count and
// byte bounds, and a Configure that supersedes them frees their room.
func TestMailboxNextEpochBounds(t *testing.T) {
	m := newMailbox(limits(1 << 20))
	ctx := context.Background()
	next := slot{2, 1}
	for i := range 2 {
		if err := deliver(ctx, m, next, "p", 10, int32(i), true); err != nil {
			t.Fatal(err)
		}
	}
	if err := deliver(ctx, m, next, "q", 10, 2, true); !errors.Is(err, ErrQueueFull) {
		t.Fatalf("third next-epoch tensor (limit 2): %v, want ErrQueueFull", err)
	}
	m.dropBefore(slot{epoch: 3})
	if err := deliver(ctx, m, slot{3, 1}, "q", 250, 0, true); err != nil {
		t.Fatalf("after the drop: %v", err)
	}
	if err := deliver(ctx, m, slot{3, 1}, "q", 1, 1, true); !errors.Is(err, ErrQueueFull) {
		t.Fatalf("next-epoch bytes past 1000: %v, want ErrQueueFull", err)
	}
	if used, n, b := m.held(); used != 1000 || n != 1 || b != 1000 {
		t.Fatalf("held %d bytes, %d next-epoch tensors of %d bytes; want 1000, 1, 1000", used, n, b)
	}
}

// One peer cannot hold more than its streams and bytes; others are not
// affected.
func TestMailboxPeerBounds(t *testing.T) {
	m := newMailbox(mailboxLimits{bytes: 1 << 20, futureBytes: 1 << 20, futureTensors: 100, peerBytes: 400, peerStreams: 2})
	var closes []func()
	for range 2 {
		c, err := m.open("p")
		if err != nil {
			t.Fatal(err)
		}
		closes = append(closes, c)
	}
	if _, err := m.open("p"); !errors.Is(err, ErrQueueFull) {
		t.Fatalf("third stream of one peer (limit 2): %v", err)
	}
	if c, err := m.open("q"); err != nil {
		t.Fatalf("another peer's stream: %v", err)
	} else {
		c()
	}
	closes[0]()
	if c, err := m.open("p"); err != nil {
		t.Fatalf("stream after one closed: %v", err)
	} else {
		c()
	}
	closes[1]()
	ctx := context.Background()
	if err := deliver(ctx, m, slot{1, 1}, "p", 100, 0, true); err != nil {
		t.Fatal(err)
	}
	if err := deliver(ctx, m, slot{1, 1}, "p", 1, 1, true); !errors.Is(err, ErrQueueFull) {
		t.Fatalf("peer past its 400 bytes: %v", err)
	}
	if err := deliver(ctx, m, slot{1, 1}, "q", 100, 2, true); err != nil {
		t.Fatalf("another peer: %v", err)
	}
	// A current-epoch tensor over the peer's bound waits for room.
	short, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if err := deliver(short, m, slot{1, 1}, "p", 1, 3, false); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("current-epoch tensor past the peer's bound: %v, want a wait", err)
	}
	if _, err := m.take(ctx, slot{1, 1}); err != nil {
		t.Fatal(err)
	}
	if err := deliver(ctx, m, slot{1, 1}, "p", 1, 3, false); err != nil {
		t.Fatalf("after a take: %v", err)
	}
}
