package transport

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"stagecoach/costmodel"
	pb "stagecoach/proto"
)

// ErrClosed is returned by an Outbox after Close.
var ErrClosed = errors.New("transport: outbox closed")

// Outbox sends tensors from one worker to its peers. Each destination has
// its own goroutines and a queue of Options.QueueLen tensors: Send returns
// as soon as the tensor is queued (the caller keeps computing while it
// travels) and blocks only when that destination's queue is full, which is
// the back-pressure a slow link or a slow receiver exerts. Connections are
// dialled on first use. Delivery failures are collected and reported by
// Flush.
type Outbox struct {
	opts   Options
	addrs  []string
	shaper Shaper
	dial   []grpc.DialOption

	mu      sync.Mutex
	links   map[int]*link
	closed  bool
	err     error // first delivery error since the last Flush
	pending sync.WaitGroup
	done    chan struct{}
	workers sync.WaitGroup

	// The owner's network interface under shaping: every link's
	// transfers take turns on it for their Egress time. Times are
	// seconds since epoch, as costmodel.Hop.Schedule takes them.
	epoch   time.Time
	nicMu   sync.Mutex
	nicFree float64
}

type link struct {
	o       *Outbox
	to      int
	free    float64 // when the emulated link is free, seconds since o.epoch
	conn    *grpc.ClientConn
	client  pb.PeerClient
	queue   chan item // waiting for the (emulated) link to be free
	onWire  chan item // past the link's busy time, waiting out the latency
	shaper  Shaper
	chunk   int
	call    []grpc.CallOption
	failure func(error)
}

type item struct {
	ctx     context.Context
	hdr     *pb.TensorHeader
	payload []byte
	at      time.Time // earliest delivery under shaping
	done    func()
}

// NewOutbox sends to addrs[w] for worker w. shaper may be nil (no
// emulation). dial adds options such as credentials; without any, the
// connection is plaintext.
func NewOutbox(opts Options, addrs []string, shaper Shaper, dial ...grpc.DialOption) (*Outbox, error) {
	opts = opts.WithDefaults()
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	d := append(opts.DialOptions(), dial...)
	if len(dial) == 0 {
		d = append(d, grpc.WithTransportCredentials(insecure.NewCredentials()))
	}
	return &Outbox{opts: opts, addrs: append([]string(nil), addrs...), shaper: shaper, dial: d, links: map[int]*link{}, done: make(chan struct{}), epoch: time.Now()}, nil
}

// Send queues one tensor for worker `to`. The payload must not be changed
// afterwards. ctx bounds both the wait for queue space and the delivery.
func (o *Outbox) Send(ctx context.Context, to int, hdr *pb.TensorHeader, payload []byte) error {
	l, err := o.link(to)
	if err != nil {
		return err
	}
	o.pending.Add(1)
	it := item{ctx: ctx, hdr: hdr, payload: payload, done: o.pending.Done}
	select {
	case l.queue <- it:
		return nil
	case <-ctx.Done():
		o.pending.Done()
		return ctx.Err()
	case <-o.done:
		o.pending.Done()
		return ErrClosed
	}
}

// Flush waits until every queued tensor was delivered or failed and
// returns (and clears) the first failure.
func (o *Outbox) Flush(ctx context.Context) error {
	ch := make(chan struct{})
	go func() { o.pending.Wait(); close(ch) }()
	select {
	case <-ch:
	case <-ctx.Done():
		return ctx.Err()
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	err := o.err
	o.err = nil
	return err
}

// Close stops every link and closes the connections. Queued tensors not yet
// sent fail.
func (o *Outbox) Close() error {
	o.mu.Lock()
	if o.closed {
		o.mu.Unlock()
		return nil
	}
	o.closed = true
	close(o.done)
	links := o.links
	o.mu.Unlock()
	o.workers.Wait()
	var first error
	for _, l := range links {
		l.drain(ErrClosed) // anything queued while Close raced with Send
		if err := l.conn.Close(); err != nil && first == nil {
			first = err
		}
	}
	return first
}

func (o *Outbox) fail(err error) {
	o.mu.Lock()
	if o.err == nil {
		o.err = err
	}
	o.mu.Unlock()
}

func (o *Outbox) link(to int) (*link, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closed {
		return nil, ErrClosed
	}
	if l, ok := o.links[to]; ok {
		return l, nil
	}
	if to < 0 || to >= len(o.addrs) || o.addrs[to] == "" {
		return nil, fmt.Errorf("transport: no address for worker %d", to)
	}
	conn, err := grpc.NewClient(o.addrs[to], o.dial...)
	if err != nil {
		return nil, fmt.Errorf("transport: dial worker %d at %s: %w", to, o.addrs[to], err)
	}
	l := &link{o: o, to: to, conn: conn, client: pb.NewPeerClient(conn), queue: make(chan item, o.opts.QueueLen),
		onWire: make(chan item, o.opts.QueueLen), shaper: o.shaper, chunk: o.opts.ChunkBytes,
		call:    o.opts.callOptions(),
		failure: func(err error) { o.fail(fmt.Errorf("send to worker %d: %w", to, err)) }}
	o.links[to] = l
	o.workers.Add(2)
	go func() { defer o.workers.Done(); l.occupy(o.done) }()
	go func() { defer o.workers.Done(); l.deliver(o.done) }()
	return l, nil
}

// occupy holds each tensor for the link's busy time, one after the other,
// then stamps when its latency has passed.
func (l *link) occupy(done <-chan struct{}) {
	defer close(l.onWire)
	for {
		var it item
		select {
		case it = <-l.queue:
		case <-done:
			l.drain(ErrClosed)
			return
		}
		if l.shaper != nil {
			free, at := l.schedule(l.shaper.Cost(l.to, len(it.payload)))
			if d := time.Until(free); d > 0 && !sleep(it.ctx, done, d) {
				l.finish(it, stopped(it.ctx))
				continue
			}
			it.at = at
		}
		select {
		case l.onWire <- it:
		case <-done:
			l.finish(it, ErrClosed)
			l.drain(ErrClosed)
			return
		}
	}
}

// schedule places a transfer priced h on this link and on the owner's
// interface, queued behind the transfers before it as the simulator
// queues them, and returns when the link is free for the next one (the
// transfer's occupancy has passed) and when the transfer arrives.
func (l *link) schedule(h costmodel.Hop) (free, at time.Time) {
	o := l.o
	o.nicMu.Lock()
	start, arrive := h.Schedule(time.Since(o.epoch).Seconds(), &l.free, &o.nicFree)
	o.nicMu.Unlock()
	return o.epoch.Add(seconds(start + h.Occupancy())), o.epoch.Add(seconds(arrive))
}

// deliver sends each tensor once its latency has passed, in order.
func (l *link) deliver(done <-chan struct{}) {
	for it := range l.onWire {
		if d := time.Until(it.at); d > 0 && !sleep(it.ctx, done, d) {
			l.finish(it, stopped(it.ctx))
			continue
		}
		l.finish(it, Send(it.ctx, l.client, it.hdr, it.payload, l.chunk, l.call...))
	}
}

func (l *link) finish(it item, err error) {
	if err != nil {
		l.failure(err)
	}
	it.done()
}

func (l *link) drain(err error) {
	for {
		select {
		case it := <-l.queue:
			l.finish(it, err)
		default:
			return
		}
	}
}

// stopped says why a wait ended early.
func stopped(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return ErrClosed
}

// sleep waits d unless ctx or done ends first; it reports whether the full
// time passed.
func sleep(ctx context.Context, done <-chan struct{}, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	case <-done:
		return false
	}
}
