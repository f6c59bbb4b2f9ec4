package worker

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"stagecoach/internal/tlsx"
	pb "stagecoach/proto"
)

// ErrQueueFull: a tensor refused because a receive bound is reached (the
// next-epoch queue, or one peer's streams or bytes); refused, not waited
// for, since nothing this worker does will make room for it soon.
var ErrQueueFull = errors.New("receive queue full")

// arrival is one received tensor on its way to the machine goroutine.
type arrival struct {
	hdr  *pb.TensorHeader
	data []float32
	// t is the reservation the tensor holds until it is taken or dropped.
	t ticket
	// sender is the certificate's worker under mutual TLS when the
	// tensor came before its epoch's plan (its sender is checked at
	// Configure); nil otherwise.
	sender *tlsx.Identity
}

// slot is the (epoch, iteration) a tensor belongs to. Peers may run ahead
// (a tensor for iteration n can arrive before this worker's RunIteration(n)
// starts), so arrivals queue per slot until the iteration takes them.
type slot struct{ epoch, iteration int64 }

func (s slot) before(o slot) bool {
	return s.epoch < o.epoch || (s.epoch == o.epoch && s.iteration < o.iteration)
}

// ticket is the memory a tensor reserved: its bytes, charged to its peer
// and, for a tensor of the next epoch, to the bounded next-epoch queue.
type ticket struct {
	peer   string
	bytes  int64
	future bool
}

// mailboxLimits bound what received tensors may hold (Config documents
// each).
type mailboxLimits struct {
	bytes         int64
	futureBytes   int64
	futureTensors int
	peerBytes     int64
	peerStreams   int
}

// peerUse is what one peer (a certificate identity or a connection)
// holds: open streams and reserved bytes.
type peerUse struct {
	streams int
	bytes   int64
}

// mailbox hands received tensors from the receive goroutines (one per
// incoming stream) to the single goroutine that owns the Machine. A tensor
// reserves its bytes after its header is checked and before its payload
// is read, so nothing is buffered beyond the bounds: a current-epoch
// tensor waits for room (back-pressure: its stream stalls through flow
// control), a next-epoch tensor that does not fit is refused (it cannot
// be consumed before the next Configure, so waiting would only hold the
// room legitimate tensors need).
type mailbox struct {
	lim mailboxLimits

	mu      sync.Mutex
	queues  map[slot][]arrival
	used    int64
	futureB int64
	futureN int
	peers   map[string]*peerUse
	wake    chan struct{} // one token: something was queued
	space   chan struct{} // closed and replaced whenever room is freed
}

func newMailbox(lim mailboxLimits) *mailbox {
	return &mailbox{lim: lim, queues: map[slot][]arrival{}, peers: map[string]*peerUse{},
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

// peer returns p's use record, creating it; mu held.
func (m *mailbox) peer(p string) *peerUse {
	u := m.peers[p]
	if u == nil {
		u = &peerUse{}
		m.peers[p] = u
	}
	return u
}

// forget drops p's record once it holds nothing; mu held.
func (m *mailbox) forget(p string, u *peerUse) {
	if u.streams == 0 && u.bytes == 0 {
		delete(m.peers, p)
	}
}

// open admits one incoming stream of peer p, refusing it past the
// per-peer stream limit. The returned function closes it.
func (m *mailbox) open(p string) (func(), error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	u := m.peer(p)
	if u.streams >= m.lim.peerStreams {
		m.forget(p, u)
		return nil, fmt.Errorf("%w: %d concurrent tensor streams from this peer, the limit", ErrQueueFull, m.lim.peerStreams)
	}
	u.streams++
	return func() {
		m.mu.Lock()
		defer m.mu.Unlock()
		u.streams--
		m.forget(p, u)
	}, nil
}

// reserve charges t to the bounds before the tensor's payload is read.
// A lone tensor larger than the mailbox bound is admitted when the
// mailbox is empty, so progress is always possible.
func (m *mailbox) reserve(ctx context.Context, t ticket) error {
	for {
		m.mu.Lock()
		u := m.peer(t.peer)
		if t.future && (m.futureN+1 > m.lim.futureTensors || m.futureB+t.bytes > m.lim.futureBytes) {
			n, b := m.futureN, m.futureB
			m.forget(t.peer, u)
			m.mu.Unlock()
			return fmt.Errorf("%w: next-epoch queue holds %d tensors, %d bytes (limits %d tensors, %d bytes)", ErrQueueFull, n, b, m.lim.futureTensors, m.lim.futureBytes)
		}
		fitsPeer := u.bytes+t.bytes <= m.lim.peerBytes
		fitsAll := m.used == 0 || m.used+t.bytes <= m.lim.bytes
		if fitsPeer && fitsAll {
			u.bytes += t.bytes
			m.used += t.bytes
			if t.future {
				m.futureN++
				m.futureB += t.bytes
			}
			m.mu.Unlock()
			return nil
		}
		if t.future || !fitsPeer && u.bytes == 0 {
			held := u.bytes
			m.forget(t.peer, u)
			m.mu.Unlock()
			if !fitsPeer {
				return fmt.Errorf("%w: this peer holds %d bytes, %d more exceed its %d", ErrQueueFull, held, t.bytes, m.lim.peerBytes)
			}
			return fmt.Errorf("%w: mailbox holds %d of %d bytes, no room for a next-epoch tensor of %d", ErrQueueFull, m.used, m.lim.bytes, t.bytes)
		}
		sp := m.space
		m.mu.Unlock()
		select {
		case <-sp:
		case <-ctx.Done():
			m.mu.Lock()
			m.forget(t.peer, m.peer(t.peer))
			m.mu.Unlock()
			return ctx.Err()
		}
	}
}

// release returns t's reservation; mu held.
func (m *mailbox) releaseLocked(t ticket) {
	m.used -= t.bytes
	if t.future {
		m.futureN--
		m.futureB -= t.bytes
	}
	if u := m.peers[t.peer]; u != nil {
		u.bytes -= t.bytes
		m.forget(t.peer, u)
	}
	m.freed()
}

// release returns a reservation whose tensor was never queued.
func (m *mailbox) release(t ticket) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.releaseLocked(t)
}

// put queues a, whose bytes a.t reserved, for s.
func (m *mailbox) put(s slot, a arrival) {
	m.mu.Lock()
	m.queues[s] = append(m.queues[s], a)
	m.mu.Unlock()
	m.notify()
}

// take returns the oldest arrival for s, waiting for one, and returns its
// reservation. Only the machine goroutine calls it.
func (m *mailbox) take(ctx context.Context, s slot) (arrival, error) {
	for {
		m.mu.Lock()
		if q := m.queues[s]; len(q) > 0 {
			a := q[0]
			q[0] = arrival{}
			if len(q) == 1 {
				delete(m.queues, s)
			} else {
				m.queues[s] = q[1:]
			}
			m.releaseLocked(a.t)
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
// superseded iteration or epoch). A retried iteration comes with a new
// epoch, so nothing of the failed attempt leaks into it.
func (m *mailbox) dropBefore(s slot) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for k, q := range m.queues {
		if k.before(s) {
			for _, a := range q {
				m.releaseLocked(a.t)
			}
			delete(m.queues, k)
		}
	}
}

// held reports the reserved bytes and the next-epoch queue's tensors and
// bytes (for tests and logs).
func (m *mailbox) held() (used int64, futureN int, futureB int64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.used, m.futureN, m.futureB
}

// dropIf discards the arrivals queued for epoch that drop reports,
// returning their reservations, and returns how many.
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
				m.releaseLocked(a.t)
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
	return n
}
