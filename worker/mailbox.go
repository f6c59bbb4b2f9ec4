package worker

import (
	"context"
	"sync"

	"stagecoach/internal/tlsx"
	pb "stagecoach/proto"
)

// arrival is one received tensor on its way to the machine goroutine.
type arrival struct {
	hdr  *pb.TensorHeader
	data []float32
	// sender is the certificate's worker under mutual TLS when the
	// tensor came before its epoch's plan (its sender is checked at
	// Configure); nil otherwise.
	sender *tlsx.Identity
}

func (a arrival) bytes() int64 { return 4 * int64(len(a.data)) }

// slot is the (epoch, iteration) a tensor belongs to. Peers may run ahead
// (a tensor for iteration n can arrive before this worker's RunIteration(n)
// starts), so arrivals queue per slot until the iteration takes them.
type slot struct{ epoch, iteration int64 }

func (s slot) before(o slot) bool {
	return s.epoch < o.epoch || (s.epoch == o.epoch && s.iteration < o.iteration)
}

// mailbox hands received tensors from the receive goroutines (one per
// incoming stream) to the single goroutine that owns the Machine. Its byte
// bound is the receive-side back-pressure: put blocks, which stalls the
// sender's gRPC stream through flow control.
type mailbox struct {
	limit int64

	mu     sync.Mutex
	queues map[slot][]arrival
	poison map[slot]error // a rejected tensor fails that iteration early
	used   int64
	wake   chan struct{} // one token: something was queued or poisoned
	space  chan struct{} // closed and replaced whenever space is freed
}

func newMailbox(limit int64) *mailbox {
	return &mailbox{limit: limit, queues: map[slot][]arrival{}, poison: map[slot]error{},
		wake: make(chan struct{}, 1), space: make(chan struct{})}
}

func (m *mailbox) notify() {
	select {
	case m.wake <- struct{}{}:
	default:
	}
}

// freed must be called with mu held.
func (m *mailbox) freed() {
	close(m.space)
	m.space = make(chan struct{})
}

// put queues a for s, waiting for space while the mailbox is full. A lone
// tensor larger than the bound is admitted so progress is always possible.
func (m *mailbox) put(ctx context.Context, s slot, a arrival) error {
	for {
		m.mu.Lock()
		if m.used == 0 || m.used+a.bytes() <= m.limit {
			m.queues[s] = append(m.queues[s], a)
			m.used += a.bytes()
			m.mu.Unlock()
			m.notify()
			return nil
		}
		sp := m.space
		m.mu.Unlock()
		select {
		case <-sp:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// fail makes the next take for s return err.
func (m *mailbox) fail(s slot, err error) {
	m.mu.Lock()
	if m.poison[s] == nil {
		m.poison[s] = err
	}
	m.mu.Unlock()
	m.notify()
}

// take returns the oldest arrival for s, waiting for one. Only the machine
// goroutine calls it.
func (m *mailbox) take(ctx context.Context, s slot) (arrival, error) {
	for {
		m.mu.Lock()
		if err := m.poison[s]; err != nil {
			m.mu.Unlock()
			return arrival{}, err
		}
		if q := m.queues[s]; len(q) > 0 {
			a := q[0]
			q[0] = arrival{}
			if len(q) == 1 {
				delete(m.queues, s)
			} else {
				m.queues[s] = q[1:]
			}
			m.used -= a.bytes()
			m.freed()
			m.mu.Unlock()
			return a, nil
		}
		m.mu.Unlock()
		select {
		case <-m.wake:
		case <-ctx.Done():
			return arrival{}, ctx.Err()
		}
	}
}

// dropBefore discards everything queued for slots before s (an aborted or
// superseded iteration or epoch) and its poison. A retried iteration
// comes with a new epoch, so nothing of the failed attempt leaks into it.
func (m *mailbox) dropBefore(s slot) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for k, q := range m.queues {
		if k.before(s) {
			for _, a := range q {
				m.used -= a.bytes()
			}
			delete(m.queues, k)
		}
	}
	for k := range m.poison {
		if k.before(s) {
			delete(m.poison, k)
		}
	}
	m.freed()
}

// dropIf discards the arrivals queued for epoch that drop reports, and
// returns how many.
func (m *mailbox) dropIf(epoch int64, drop func(arrival) bool) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := 0
	for k, q := range m.queues {
		if k.epoch != epoch {
			continue
		}
		kept := q[:0]
		for _, a := range q {
			if drop(a) {
				m.used -= a.bytes()
				n++
				continue
			}
			kept = append(kept, a)
		}
		clear(q[len(kept):])
		if len(kept) == 0 {
			delete(m.queues, k)
		} else {
			m.queues[k] = kept
		}
	}
	if n > 0 {
		m.freed()
	}
	return n
}
