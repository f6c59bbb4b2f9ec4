// Package remote is a compute.Backend that runs stages in another
// process over the compute protocol (proto/compute/compute.proto): Dial
// reaches a backend that is already serving, Start runs the backend's
// command as a child process and supervises it.
//
// A backend is trusted with the numbers, not with staying well: every
// call has a deadline, every answer is checked against what the operation
// must return (shapes, sizes, names), and a backend that dies, hangs,
// breaks a stream or answers something impossible fails the call with an
// error wrapping compute.ErrBackend that names it. After such a failure
// the backend is done: every later call fails at once with the same
// error. A refusal (the backend's answer that the input was wrong) is an
// ordinary error and leaves the backend usable.
package remote

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"

	"stagecoach/compute"
	"stagecoach/compute/internal/wire"
	"stagecoach/internal/spare"
	pb "stagecoach/proto/compute"
)

// Limits bound what the client accepts from a backend (zero fields: the
// defaults, see wire.Limits).
type Limits = wire.Limits

// Options configure a remote backend. Zero fields take the defaults.
type Options struct {
	// CallTimeout bounds an operation that computes or moves tensors
	// (default 5 minutes): a backend that takes longer is taken as hung.
	CallTimeout time.Duration
	// ControlTimeout bounds the operations that compute nothing: Unload,
	// ZeroGrad, KeepContributions (default 30 s).
	ControlTimeout time.Duration
	// StartTimeout bounds the wait for a started backend's Hello, or a
	// dialled one's (default 2 minutes: importing a framework is slow).
	StartTimeout time.Duration
	// StopTimeout is how long Close waits for a started backend to exit
	// after SIGTERM before it kills its process group (default 5 s).
	StopTimeout time.Duration
	Limits      Limits
	// SharedMemoryBytes is the size of the shared-memory region offered
	// to the backend at Hello (default 64 MiB, reserved in /dev/shm);
	// calls whose tensors fit move them through it instead of gRPC
	// chunks. Negative: never offer one.
	SharedMemoryBytes int64
	// SharedMemoryDir is where the region's file is made (default
	// /dev/shm).
	SharedMemoryDir string
	// Observe, when set, is told of each operation that succeeded: its
	// name, its wall time as this client saw it, and the time the
	// backend says it spent computing it (0 when it says nothing, or
	// names a time the call could not hold). The difference is the
	// round trip's cost: the tensors' bytes and the hand-overs between
	// the two processes.
	Observe func(op string, call, compute time.Duration)
}

// Defaults of Options.
const (
	DefaultCallTimeout    = 5 * time.Minute
	DefaultControlTimeout = 30 * time.Second
	DefaultStartTimeout   = 2 * time.Minute
	DefaultStopTimeout    = 5 * time.Second
	// DefaultSharedMemoryBytes holds a 16 MiB activation several times
	// over and fits Docker's default 64 MiB /dev/shm.
	DefaultSharedMemoryBytes = 32 << 20
)

func (o Options) withDefaults() (Options, error) {
	if o.CallTimeout < 0 || o.ControlTimeout < 0 || o.StartTimeout < 0 || o.StopTimeout < 0 {
		return o, errors.New("remote compute backend: negative timeout")
	}
	if o.CallTimeout == 0 {
		o.CallTimeout = DefaultCallTimeout
	}
	if o.ControlTimeout == 0 {
		o.ControlTimeout = DefaultControlTimeout
	}
	if o.StartTimeout == 0 {
		o.StartTimeout = DefaultStartTimeout
	}
	if o.StopTimeout == 0 {
		o.StopTimeout = DefaultStopTimeout
	}
	if o.SharedMemoryBytes == 0 {
		o.SharedMemoryBytes = DefaultSharedMemoryBytes
	}
	if o.SharedMemoryDir == "" {
		o.SharedMemoryDir = "/dev/shm"
	}
	var err error
	o.Limits, err = o.Limits.WithDefaults()
	return o, err
}

// Backend is a backend in another process.
type Backend struct {
	opts   Options
	conn   *grpc.ClientConn
	client pb.ComputeClient
	hello  *pb.Hello
	// where says how the backend was reached, for errors: `command
	// "..." (pid N)` or `at ADDR`.
	where string
	proc  *process

	// alive ends when the backend failed or was closed; every call's
	// context derives from it, so a call in flight ends with it.
	alive context.Context
	end   context.CancelCauseFunc

	mu      sync.Mutex
	name    string // set once Hello answered
	failure error
	closed  bool

	// shm is the shared region the backend mapped (nil: none); shmMu
	// gives it to one call at a time (others use chunks).
	shm   *wire.Region
	shmMu sync.Mutex

	// spare holds output buffers handed back through Stage.Recycle, for
	// the next tensors received (which overwrite them whole).
	spare spare.Buffers
}

// maxSpare bounds the buffers a Backend keeps for reuse.
const maxSpare = 8

// Dial connects to a backend serving on addr ("unix:///path" or
// "host:port") and checks its Hello within opts.StartTimeout.
func Dial(ctx context.Context, addr string, opts Options) (*Backend, error) {
	b, err := newBackend(addr, "at "+addr, opts, false)
	if err != nil {
		return nil, err
	}
	if err := b.greet(ctx, false); err != nil {
		_ = b.Close()
		return nil, err
	}
	return b, nil
}

func newBackend(addr, where string, opts Options, retry bool) (*Backend, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	_, _, target, err := wire.Addr(addr)
	if err != nil {
		return nil, fmt.Errorf("remote compute backend: %v", err)
	}
	dopts := []grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(wire.MaxMessageBytes), grpc.MaxCallSendMsgSize(wire.MaxMessageBytes)),
		grpc.WithInitialWindowSize(wire.StreamWindow), grpc.WithInitialConnWindowSize(wire.ConnWindow),
		grpc.WithReadBufferSize(wire.SocketBuffer), grpc.WithWriteBufferSize(wire.SocketBuffer),
	}
	if retry {
		// A starting backend's socket appears when it is ready: try
		// again soon rather than after gRPC's default second.
		dopts = append(dopts, grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 20 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 500 * time.Millisecond},
			MinConnectTimeout: 5 * time.Second,
		}))
	}
	conn, err := grpc.NewClient(target, dopts...)
	if err != nil {
		return nil, fmt.Errorf("remote compute backend %s: %v", where, err)
	}
	b := &Backend{opts: opts, conn: conn, client: pb.NewComputeClient(conn), where: where, spare: spare.Buffers{Max: maxSpare}}
	b.alive, b.end = context.WithCancelCause(context.Background())
	return b, nil
}

// greet asks for Hello and checks the protocol version. waitReady makes
// the call wait for the socket to accept (a starting backend).
func (b *Backend) greet(ctx context.Context, waitReady bool) error {
	ctx, cancel := context.WithTimeout(ctx, b.opts.StartTimeout)
	defer cancel()
	stop := context.AfterFunc(b.alive, cancel)
	defer stop()
	var copts []grpc.CallOption
	if waitReady {
		copts = append(copts, grpc.WaitForReady(true))
	}
	hello := &pb.Request{Version: pb.Version_VERSION_1, Op: pb.Op_OP_HELLO}
	var region *wire.Region
	if b.opts.SharedMemoryBytes > 0 {
		// Without /dev/shm (or room in it) tensors go through gRPC.
		if r, err := wire.CreateRegion(b.opts.SharedMemoryDir, b.opts.SharedMemoryBytes); err == nil {
			region = r
			hello.ShmPath, hello.ShmBytes = r.Path(), r.Size()
			defer r.Unlink() // mapped by both ends once Hello is answered
		}
	}
	resp, _, err := b.exchange(ctx, hello, nil, copts...)
	if region != nil {
		if err == nil && resp.GetHello().GetShm() {
			b.shm = region
		} else {
			region.Close()
		}
	}
	if err == nil && resp.Hello == nil {
		err = fmt.Errorf("%w: Hello answered without a hello", wire.ErrMalformed)
	}
	if err == nil && resp.Hello.Version != pb.Version_VERSION_1 {
		err = fmt.Errorf("%w: the backend speaks protocol %v, this client %v", wire.ErrMalformed, resp.Hello.Version, pb.Version_VERSION_1)
	}
	if err != nil {
		if cause := context.Cause(b.alive); cause != nil && b.alive.Err() != nil {
			return cause
		}
		var r refusal
		if errors.As(err, &r) {
			err = errors.New(r.msg)
		} else if ctx.Err() != nil && errors.Is(context.Cause(ctx), context.DeadlineExceeded) {
			err = fmt.Errorf("no Hello within %v: %v", b.opts.StartTimeout, err)
		}
		if b.proc != nil {
			err = fmt.Errorf("%v%s", err, b.proc.stderrNote())
		}
		return b.fail(err)
	}
	b.mu.Lock()
	b.hello = resp.Hello
	b.name = fmt.Sprintf("%q backend %s", resp.Hello.Backend, b.where)
	b.mu.Unlock()
	return nil
}

// Name implements compute.Backend: the name the backend gave in Hello.
func (b *Backend) Name() string {
	if b.hello == nil {
		return "remote"
	}
	return b.hello.Backend
}

// VersionInfo is what the backend said of its build in Hello.
func (b *Backend) VersionInfo() string { return b.hello.GetVersionInfo() }

// String names the backend for errors: its name and where it runs.
func (b *Backend) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.name == "" {
		return "compute backend " + b.where
	}
	return b.name
}

// fail records the backend's first failure and ends every call; it
// returns the failure, which wraps compute.ErrBackend and names the
// backend.
func (b *Backend) fail(err error) error {
	name := b.String()
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed && b.failure == nil {
		return fmt.Errorf("%w: %s is closed", compute.ErrBackend, name)
	}
	if b.failure == nil {
		b.failure = fmt.Errorf("%w: %s: %v", compute.ErrBackend, name, err)
		b.end(b.failure)
	}
	return b.failure
}

// Err is the failure that ended the backend, or nil while it is usable.
func (b *Backend) Err() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.failure != nil {
		return b.failure
	}
	if b.closed {
		return fmt.Errorf("%w: %s is closed", compute.ErrBackend, b.where)
	}
	return nil
}

// Close implements compute.Backend: it closes the connection and stops a
// started process (SIGTERM, then SIGKILL to its process group after
// StopTimeout).
func (b *Backend) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	b.mu.Unlock()
	b.end(fmt.Errorf("%w: %s is closed", compute.ErrBackend, b.String()))
	err := b.conn.Close()
	if b.proc != nil {
		b.proc.stop(b.opts.StopTimeout)
	}
	if b.shm != nil {
		// Calls ended with the connection; the last one lets go of
		// the region before it is unmapped.
		b.shmMu.Lock()
		b.shm.Close()
		b.shmMu.Unlock()
	}
	return err
}

// refusal is the backend's Response.error: the input was wrong (or the
// backend could not do it), not a failure of the backend.
type refusal struct{ msg string }

func (r refusal) Error() string { return r.msg }

// exchange runs one call on stream: the request with its input tensors,
// then the response with its outputs, checked against the limits.
func (b *Backend) exchange(ctx context.Context, req *pb.Request, ins []wire.Value, copts ...grpc.CallOption) (*pb.Response, []wire.Value, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // ends the stream if it is left half read
	var region *wire.Region
	if b.shm != nil && len(ins) > 0 && b.shm.Fits(ins) && b.shmMu.TryLock() {
		defer b.shmMu.Unlock()
		if err := b.shm.Put(ins); err != nil {
			return nil, nil, err
		}
		region = b.shm
		req.Shm, req.ShmPath = true, region.Path()
	} else if b.shm != nil && len(ins) == 0 && b.shmMu.TryLock() {
		// No inputs, but the outputs may come back through the region.
		defer b.shmMu.Unlock()
		region = b.shm
		req.Shm, req.ShmPath = true, region.Path()
	}
	stream, err := b.client.Call(ctx, copts...)
	if err != nil {
		return nil, nil, err
	}
	err = stream.Send(&pb.Frame{Body: &pb.Frame_Request{Request: req}})
	if err == nil && region == nil {
		err = wire.Send(stream.Send, ins)
	}
	if err == nil {
		err = stream.CloseSend()
	}
	// io.EOF: the backend answered before reading every input (a
	// refusal); its answer follows.
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, nil, err
	}
	f, err := stream.Recv()
	if errors.Is(err, io.EOF) {
		return nil, nil, fmt.Errorf("%w: the stream ended without a response", wire.ErrMalformed)
	}
	if err != nil {
		return nil, nil, err
	}
	resp := f.GetResponse()
	if resp == nil {
		return nil, nil, fmt.Errorf("%w: the first frame of the answer is a %T, not a response", wire.ErrMalformed, f.GetBody())
	}
	if resp.Error != "" {
		if len(resp.Outputs) > 0 {
			return nil, nil, fmt.Errorf("%w: an error response with %d outputs", wire.ErrMalformed, len(resp.Outputs))
		}
		return nil, nil, refusal{resp.Error}
	}
	sizes, err := wire.Check(resp.Outputs, b.opts.Limits)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: outputs: %v", wire.ErrMalformed, err)
	}
	var outs []wire.Value
	if resp.Shm {
		if region == nil {
			return nil, nil, fmt.Errorf("%w: outputs in a shared region the call did not use", wire.ErrMalformed)
		}
		if outs, err = region.GetInto(resp.Outputs, sizes, b.spare.Get); err == nil {
			_, err = wire.Recv(stream.Recv, nil, nil) // nothing follows
		}
	} else {
		outs, err = wire.RecvInto(stream.Recv, resp.Outputs, sizes, b.spare.Get)
	}
	if err != nil {
		return nil, nil, err
	}
	return resp, outs, nil
}

// call runs op with a deadline of timeout. A refusal comes back as an
// ordinary error naming the backend; anything else fails the backend.
func (b *Backend) call(timeout time.Duration, req *pb.Request, ins []wire.Value) (*pb.Response, []wire.Value, error) {
	if err := b.Err(); err != nil {
		return nil, nil, err
	}
	op := wire.OpName(req.Op)
	req.Version = pb.Version_VERSION_1
	for _, v := range ins {
		if err := checkData(v); err != nil {
			return nil, nil, fmt.Errorf("%s: %s: %v", b.String(), op, err)
		}
		req.Inputs = append(req.Inputs, v.Meta)
	}
	ctx, cancel := context.WithTimeout(b.alive, timeout)
	defer cancel()
	began := time.Now()
	resp, outs, err := b.exchange(ctx, req, ins)
	if err == nil {
		if b.opts.Observe != nil {
			took := time.Since(began)
			b.opts.Observe(op, took, reportedCompute(resp, took))
		}
		return resp, outs, nil
	}
	var r refusal
	if errors.As(err, &r) {
		return nil, nil, fmt.Errorf("%s: %s", b.String(), r.msg)
	}
	if b.alive.Err() != nil {
		return nil, nil, b.Err()
	}
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return nil, nil, b.fail(fmt.Errorf("%s did not answer within %v", op, timeout))
	}
	if b.proc != nil && b.proc.exitedWithin(time.Second) {
		// The stream broke because the process died: say so.
		return nil, nil, b.fail(b.proc.exitErr())
	}
	return nil, nil, b.fail(fmt.Errorf("%s: %v", op, err))
}

// reportedCompute is the compute time the backend reported for a call
// that took took, or 0 when it reported none or one the call cannot hold.
// It is only ever a measurement, so a wrong one is dropped, not failed.
func reportedCompute(resp *pb.Response, took time.Duration) time.Duration {
	c := time.Duration(resp.GetComputeNanos())
	if c <= 0 || c > took {
		return 0
	}
	return c
}

// checkData refuses an input whose data does not match its shape.
func checkData(v wire.Value) error {
	n, err := wire.Elems(v.Meta.Shape)
	if err != nil {
		return fmt.Errorf("input %q: %v", v.Meta.Name, err)
	}
	have := len(v.F32)
	if v.Meta.Dtype == pb.DType_DTYPE_INT32 {
		have = len(v.I32)
	}
	if int64(have) != n {
		return fmt.Errorf("input %q of shape %v has %d elements, the shape needs %d", v.Meta.Name, v.Meta.Shape, have, n)
	}
	return nil
}

// impossible fails the backend for an answer the operation cannot give.
func (b *Backend) impossible(op pb.Op, format string, args ...any) error {
	return b.fail(fmt.Errorf("%s answered %s", wire.OpName(op), fmt.Sprintf(format, args...)))
}

// Load implements compute.Backend.
func (b *Backend) Load(ctx context.Context, spec compute.LoadSpec) (compute.Stage, error) {
	req := &pb.Request{Op: pb.Op_OP_LOAD, Load: &pb.LoadArgs{
		ModelJson: spec.Model, OptimJson: spec.Optim,
		Lo: int32(spec.Shard.Lo), Hi: int32(spec.Shard.Hi), Embed: spec.Shard.Embed, Head: spec.Shard.Head,
	}}
	if int(req.Load.Lo) != spec.Shard.Lo || int(req.Load.Hi) != spec.Shard.Hi {
		return nil, fmt.Errorf("%s: Load: shard blocks [%d,%d) out of range", b.String(), spec.Shard.Lo, spec.Shard.Hi)
	}
	timeout := b.opts.CallTimeout
	if dl, ok := ctx.Deadline(); ok {
		timeout = min(timeout, time.Until(dl))
	}
	resp, _, err := b.call(timeout, req, nil)
	if err != nil {
		return nil, err
	}
	if resp.Stage == 0 || resp.Description == nil {
		return nil, b.impossible(pb.Op_OP_LOAD, "no stage handle or description")
	}
	d, err := b.description(resp.Description)
	if err != nil {
		return nil, b.impossible(pb.Op_OP_LOAD, "%v", err)
	}
	return &Stage{b: b, h: resp.Stage, spec: spec.Shard, desc: d, fwd: map[int][]int{}}, nil
}

// description checks a stage's description and converts it.
func (b *Backend) description(p *pb.Description) (compute.Description, error) {
	d := compute.Description{Backend: p.Backend, Width: int(p.Width), Caps: compute.Capabilities{SplitBackward: p.SplitBackward}}
	if p.Width < 1 || p.Width > 1<<20 {
		return d, fmt.Errorf("a description with width %d", p.Width)
	}
	if len(p.Params) > b.opts.Limits.MaxTensors {
		return d, fmt.Errorf("a description of %d parameters, over the limit of %d", len(p.Params), b.opts.Limits.MaxTensors)
	}
	var total int64
	for i, q := range p.Params {
		n, err := wire.Elems(q.Shape)
		if err == nil && (len(q.Shape) > wire.MaxRank || 4*n > b.opts.Limits.MaxTensorBytes) {
			err = fmt.Errorf("over the limits")
		}
		if err != nil {
			return d, fmt.Errorf("parameter %d (%q) of shape %v: %v", i, q.Name, q.Shape, err)
		}
		if q.Name == "" {
			return d, fmt.Errorf("parameter %d without a name", i)
		}
		if total += 4 * n; total > b.opts.Limits.MaxTensorBytes {
			return d, fmt.Errorf("a gradient of %d bytes, over the limit of %d", total, b.opts.Limits.MaxTensorBytes)
		}
		shape := make([]int, len(q.Shape))
		for j, x := range q.Shape {
			shape[j] = int(x)
		}
		d.Params = append(d.Params, compute.ParamInfo{Name: q.Name, Index: int(q.Index), Shape: shape, Decay: q.Decay})
	}
	return d, nil
}

// Stage is a stage loaded in a remote backend. Describe may be called
// from any goroutine; everything else from one at a time.
type Stage struct {
	b    *Backend
	h    int64
	spec compute.ShardSpec
	desc compute.Description // never changed after Load
	// fwd holds each pending microbatch's forward input shape, which its
	// Backward must return.
	fwd map[int][]int
}

var _ compute.Stage = (*Stage)(nil)

// Describe implements compute.Stage.
func (s *Stage) Describe() compute.Description { return s.desc }

func (s *Stage) req(op pb.Op, mb int) *pb.Request {
	return &pb.Request{Op: op, Stage: s.h, Microbatch: int64(mb)}
}

// control runs an operation that computes nothing and answers nothing.
func (s *Stage) control(r *pb.Request) error {
	resp, outs, err := s.b.call(s.b.opts.ControlTimeout, r, nil)
	if err == nil {
		err = s.noOutputs(r.Op, resp, outs)
	}
	return err
}

// simple runs an operation that moves no tensors back.
func (s *Stage) simple(r *pb.Request, ins ...wire.Value) (*pb.Response, error) {
	resp, outs, err := s.b.call(s.b.opts.CallTimeout, r, ins)
	if err == nil {
		err = s.noOutputs(r.Op, resp, outs)
	}
	return resp, err
}

func (s *Stage) noOutputs(op pb.Op, _ *pb.Response, outs []wire.Value) error {
	if len(outs) != 0 {
		return s.b.impossible(op, "%d tensors where none belong", len(outs))
	}
	return nil
}

// one expects exactly one float32 output of shape want.
func (s *Stage) one(op pb.Op, outs []wire.Value, want []int) (*compute.Tensor, error) {
	if len(outs) != 1 {
		return nil, s.b.impossible(op, "%d tensors, want 1", len(outs))
	}
	o := outs[0]
	if o.Meta.Dtype != pb.DType_DTYPE_FLOAT32 {
		return nil, s.b.impossible(op, "a %v tensor, want float32", o.Meta.Dtype)
	}
	if got := o.Shape(); !slices.Equal(got, want) {
		return nil, s.b.impossible(op, "shape %v, want %v", got, want)
	}
	return &compute.Tensor{Shape: o.Shape(), Data: o.F32}, nil
}

// hiddenShape is [B, T, Width] of an input [B, T, ...].
func (s *Stage) hiddenShape(x *compute.Tensor) []int {
	if x == nil || len(x.Shape) < 2 {
		return nil
	}
	return []int{x.Shape[0], x.Shape[1], s.desc.Width}
}

func input(name string, x *compute.Tensor) []wire.Value {
	if x == nil {
		return nil
	}
	return []wire.Value{wire.Float32(name, x.Shape, x.Data)}
}

// ZeroGrad implements compute.Stage.
func (s *Stage) ZeroGrad() error {
	clear(s.fwd)
	return s.control(s.req(pb.Op_OP_ZERO_GRAD, 0))
}

// Forward implements compute.Stage: the output must be [B, T, Width].
func (s *Stage) Forward(mb int, x *compute.Tensor) (*compute.Tensor, error) {
	if x == nil {
		return nil, fmt.Errorf("%s: Forward: no input", s.b.String())
	}
	_, outs, err := s.b.call(s.b.opts.CallTimeout, s.req(pb.Op_OP_FORWARD, mb), input("x", x))
	if err != nil {
		return nil, err
	}
	y, err := s.one(pb.Op_OP_FORWARD, outs, s.hiddenShape(x))
	if err != nil {
		return nil, err
	}
	s.fwd[mb] = slices.Clone(x.Shape)
	return y, nil
}

// Loss implements compute.Stage: the gradient must be shaped like hidden.
func (s *Stage) Loss(mb int, hidden *compute.Tensor, targets []int32) (float64, *compute.Tensor, error) {
	if hidden == nil || len(hidden.Shape) < 2 {
		return 0, nil, fmt.Errorf("%s: Loss: the hidden state must be [B, T, %d]", s.b.String(), s.desc.Width)
	}
	ins := append(input("hidden", hidden), wire.Int32("targets", []int{len(targets)}, targets))
	if len(targets) == hidden.Shape[0]*hidden.Shape[1] {
		ins[1].Meta.Shape = []int64{int64(hidden.Shape[0]), int64(hidden.Shape[1])}
	}
	resp, outs, err := s.b.call(s.b.opts.CallTimeout, s.req(pb.Op_OP_LOSS, mb), ins)
	if err != nil {
		return 0, nil, err
	}
	g, err := s.one(pb.Op_OP_LOSS, outs, hidden.Shape)
	if err != nil {
		return 0, nil, err
	}
	return resp.Loss, g, nil
}

// Backward implements compute.Stage: the gradient must be shaped like the
// microbatch's forward input, and absent on the embedding stage.
func (s *Stage) Backward(mb int, grad *compute.Tensor) (*compute.Tensor, error) {
	return s.backward(pb.Op_OP_BACKWARD, mb, grad)
}

// BackwardInput implements compute.Stage.
func (s *Stage) BackwardInput(mb int, grad *compute.Tensor) (*compute.Tensor, error) {
	return s.backward(pb.Op_OP_BACKWARD_INPUT, mb, grad)
}

func (s *Stage) backward(op pb.Op, mb int, grad *compute.Tensor) (*compute.Tensor, error) {
	if grad == nil {
		return nil, fmt.Errorf("%s: %s: no gradient", s.b.String(), wire.OpName(op))
	}
	_, outs, err := s.b.call(s.b.opts.CallTimeout, s.req(op, mb), input("grad", grad))
	if err != nil {
		return nil, err
	}
	want, ok := s.fwd[mb]
	delete(s.fwd, mb)
	if s.spec.Embed {
		if len(outs) != 0 {
			return nil, s.b.impossible(op, "%d tensors on the embedding stage, which has no input gradient", len(outs))
		}
		return nil, nil
	}
	if !ok {
		want = s.hiddenShape(grad)
	}
	return s.one(op, outs, want)
}

// Recycle implements compute.Recycler: the backend receives later
// tensors into t's memory.
func (s *Stage) Recycle(t *compute.Tensor) {
	if t != nil {
		s.b.spare.Put(t.Data)
	}
}

// BackwardWeight implements compute.Stage.
func (s *Stage) BackwardWeight(mb int) error {
	_, err := s.simple(s.req(pb.Op_OP_BACKWARD_WEIGHT, mb))
	return err
}

// KeepContributions implements compute.Stage.
func (s *Stage) KeepContributions(on bool) error {
	r := s.req(pb.Op_OP_KEEP_CONTRIBUTIONS, 0)
	r.Keep = on
	return s.control(r)
}

// flat expects one flat float32 output of the stage's gradient length.
func (s *Stage) flat(op pb.Op, outs []wire.Value) ([]float32, error) {
	t, err := s.one(op, outs, []int{s.desc.GradElems()})
	if err != nil {
		return nil, err
	}
	return t.Data, nil
}

// Contribution implements compute.Stage.
func (s *Stage) Contribution(mb int) ([]float32, error) {
	_, outs, err := s.b.call(s.b.opts.CallTimeout, s.req(pb.Op_OP_CONTRIBUTION, mb), nil)
	if err != nil {
		return nil, err
	}
	return s.flat(pb.Op_OP_CONTRIBUTION, outs)
}

// Grads implements compute.Stage.
func (s *Stage) Grads() ([]float32, error) {
	_, outs, err := s.b.call(s.b.opts.CallTimeout, s.req(pb.Op_OP_GRADS, 0), nil)
	if err != nil {
		return nil, err
	}
	return s.flat(pb.Op_OP_GRADS, outs)
}

// SetGrads implements compute.Stage.
func (s *Stage) SetGrads(g []float32) error {
	_, err := s.simple(s.req(pb.Op_OP_SET_GRADS, 0), wire.Float32("grads", []int{len(g)}, g))
	return err
}

// ScaleGrads implements compute.Stage.
func (s *Stage) ScaleGrads(f float32) error {
	r := s.req(pb.Op_OP_SCALE_GRADS, 0)
	r.Scale = f
	_, err := s.simple(r)
	return err
}

// SumSquares implements compute.Stage: one per parameter.
func (s *Stage) SumSquares() ([]float64, error) {
	resp, err := s.simple(s.req(pb.Op_OP_SUM_SQUARES, 0))
	if err != nil {
		return nil, err
	}
	if len(resp.SumSquares) != len(s.desc.Params) {
		return nil, s.b.impossible(pb.Op_OP_SUM_SQUARES, "%d sums, the stage has %d parameters", len(resp.SumSquares), len(s.desc.Params))
	}
	return resp.SumSquares, nil
}

// Step implements compute.Stage.
func (s *Stage) Step(step int, lr float64, clip float32) error {
	r := s.req(pb.Op_OP_STEP, 0)
	r.Step = &pb.StepArgs{Step: int64(step), Lr: lr, Clip: clip}
	_, err := s.simple(r)
	return err
}

// State implements compute.Stage: names and shapes must follow Describe.
func (s *Stage) State() ([]compute.ParamState, error) {
	_, outs, err := s.b.call(s.b.opts.CallTimeout, s.req(pb.Op_OP_STATE, 0), nil)
	if err != nil {
		return nil, err
	}
	st, err := wire.ParseState(s.desc, outs)
	if err != nil {
		return nil, s.b.impossible(pb.Op_OP_STATE, "%v", err)
	}
	return st, nil
}

// SetState implements compute.Stage.
func (s *Stage) SetState(states []compute.ParamState) error {
	var ins []wire.Value
	for _, st := range states {
		ins = append(ins, wire.Float32(st.Name, st.Shape, st.W))
		if len(st.M) > 0 || len(st.V) > 0 {
			ins = append(ins, wire.Float32(wire.MomentM+st.Name, st.Shape, st.M), wire.Float32(wire.MomentV+st.Name, st.Shape, st.V))
		}
	}
	_, err := s.simple(s.req(pb.Op_OP_SET_STATE, 0), ins...)
	return err
}

// Close implements compute.Stage: it unloads the stage (nothing to do
// when the backend is gone).
func (s *Stage) Close() error {
	if s.b.Err() != nil {
		return nil
	}
	return s.control(s.req(pb.Op_OP_UNLOAD, 0))
}
