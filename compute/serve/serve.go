// Package serve serves a compute.Backend over the compute protocol
// (proto/compute/compute.proto): `stagecoach compute-serve` puts the
// built-in Go model behind it, and tests put fakes behind it. Loaded
// stages are named by handles; each stage runs one operation at a time.
// Every size a client declares is checked against Limits before anything
// is allocated, and every failure of an operation (bad input, or the
// backend's own error) is answered in Response.error, naming what was
// wrong, without ending the server.
package serve

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"

	"stagecoach/compute"
	"stagecoach/compute/internal/wire"
	"stagecoach/internal/failpoint"
	pb "stagecoach/proto/compute"
)

// Limits bound what the server accepts from a client (zero fields: the
// defaults, see wire.Limits).
type Limits = wire.Limits

// DefaultMaxTensorBytes is the default of Limits.MaxTensorBytes.
const DefaultMaxTensorBytes = wire.DefaultMaxTensorBytes

// Options configure a Server.
type Options struct {
	Limits Limits
	// VersionInfo describes the backend's build in Hello (e.g. "stagecoach
	// go1.26").
	VersionInfo string
	// MaxStages bounds the stages loaded at once (default 1024).
	MaxStages int
	// BorrowInputs hands float32 inputs that came through the shared
	// region to the backend in place, without a copy. Only for a backend
	// whose stages read their inputs during the call and keep none of
	// them (the built-in model copies what it keeps).
	BorrowInputs bool
}

// Server serves one backend.
type Server struct {
	pb.UnimplementedComputeServer
	backend compute.Backend
	opts    Options

	mu     sync.Mutex
	stages map[int64]*entry
	next   int64
	grpc   *grpc.Server
	// served is closed when a Serve started by Start returns.
	served chan struct{}
	// regions are the shared-memory regions clients offered at Hello,
	// by path (the client unlinks the file once it is mapped here).
	regions map[string]*wire.Region
	// forwards counts the Forward calls answered while the wrong-shape
	// failpoint is armed.
	forwards atomic.Int64
}

// maxRegions bounds the shared regions mapped at once (one per client).
const maxRegions = 64

// entry is a loaded stage; mu runs its operations one at a time.
type entry struct {
	mu    sync.Mutex
	stage compute.Stage
	// closed is set by Unload, under mu: an operation that waited for
	// mu behind it finds the stage gone.
	closed bool
}

// recycle returns the call that hands t back to the stage, if the stage
// takes its outputs back (compute.Recycler).
func (e *entry) recycle(t *compute.Tensor) func() {
	r, ok := e.stage.(compute.Recycler)
	if !ok || t == nil {
		return nil
	}
	return func() {
		e.mu.Lock()
		defer e.mu.Unlock()
		if !e.closed {
			r.Recycle(t)
		}
	}
}

// New returns a server of b.
func New(b compute.Backend, opts Options) (*Server, error) {
	lim, err := opts.Limits.WithDefaults()
	if err != nil {
		return nil, err
	}
	opts.Limits = lim
	if opts.MaxStages < 0 {
		return nil, fmt.Errorf("compute server: negative max stages %d", opts.MaxStages)
	}
	if opts.MaxStages == 0 {
		opts.MaxStages = 1024
	}
	return &Server{backend: b, opts: opts, stages: map[int64]*entry{}, regions: map[string]*wire.Region{}}, nil
}

// Listen listens on addr: "unix:///path" (a stale socket file there is
// removed first) or a loopback host:port. Other TCP addresses are
// refused: the protocol has no authentication.
func Listen(addr string) (net.Listener, error) {
	network, address, _, err := wire.Addr(addr)
	if err != nil {
		return nil, fmt.Errorf("compute server: %v", err)
	}
	if network == "unix" {
		if fi, err := os.Lstat(address); err == nil && fi.Mode()&os.ModeSocket != 0 {
			_ = os.Remove(address)
		}
		return net.Listen("unix", address)
	}
	host, _, err := net.SplitHostPort(address)
	if err != nil {
		return nil, fmt.Errorf("compute server: address %q: want unix:///path or host:port: %v", addr, err)
	}
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return nil, fmt.Errorf("compute server: address %q is not loopback; the compute protocol is unauthenticated, so it listens on a Unix socket or loopback only", addr)
	}
	return net.Listen("tcp", address)
}

// Start serves b on addr (see Listen) in the background until Stop,
// which then waits for it: what tests and benchmarks want of a server in
// their own process.
func Start(b compute.Backend, opts Options, addr string) (*Server, error) {
	s, err := New(b, opts)
	if err != nil {
		return nil, err
	}
	lis, err := Listen(addr)
	if err != nil {
		return nil, err
	}
	s.served = make(chan struct{})
	s.grpcServer() // made now, so that a Stop before the goroutine runs stops it
	go func() {
		defer close(s.served)
		_ = s.Serve(lis)
	}()
	return s, nil
}

// Serve serves on lis until Stop; it returns nil after Stop.
func (s *Server) Serve(lis net.Listener) error {
	err := s.grpcServer().Serve(lis)
	if errors.Is(err, grpc.ErrServerStopped) {
		return nil
	}
	return err
}

// grpcServer makes the gRPC server on first use.
func (s *Server) grpcServer() *grpc.Server {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.grpc == nil {
		s.grpc = grpc.NewServer(grpc.MaxRecvMsgSize(wire.MaxMessageBytes), grpc.MaxSendMsgSize(wire.MaxMessageBytes),
			grpc.InitialWindowSize(wire.StreamWindow), grpc.InitialConnWindowSize(wire.ConnWindow),
			grpc.ReadBufferSize(wire.SocketBuffer), grpc.WriteBufferSize(wire.SocketBuffer))
		pb.RegisterComputeServer(s.grpc, s)
	}
	return s.grpc
}

// Stop stops serving (calls in flight end) and closes every stage not
// busy in an operation.
func (s *Server) Stop() {
	s.mu.Lock()
	g := s.grpc
	stages := s.stages
	s.stages = map[int64]*entry{}
	regions := s.regions
	s.regions = map[string]*wire.Region{}
	s.mu.Unlock()
	if g != nil {
		g.Stop()
	}
	if s.served != nil {
		<-s.served
	}
	for _, r := range regions {
		r.Close()
	}
	for _, e := range stages {
		// A stage still inside an operation (a backend that hangs)
		// is left as it is: Stop must not wait for it.
		if !e.mu.TryLock() {
			continue
		}
		if !e.closed {
			e.closed = true
			_ = e.stage.Close()
		}
		e.mu.Unlock()
	}
}

// Call implements the Compute service: one operation per stream.
func (s *Server) Call(stream pb.Compute_CallServer) error {
	f, err := stream.Recv()
	if err != nil {
		return err
	}
	req := f.GetRequest()
	if req == nil {
		return s.refuse(stream, "the first frame of a call must be a request, got %T", f.GetBody())
	}
	if req.Version != pb.Version_VERSION_1 {
		return s.refuse(stream, "protocol version %v; this server speaks %v", req.Version, pb.Version_VERSION_1)
	}
	if err := checkInputs(req); err != nil {
		return s.refuse(stream, "%v: %v", wire.OpName(req.Op), err)
	}
	sizes, err := wire.Check(req.Inputs, s.opts.Limits)
	if err != nil {
		return s.refuse(stream, "%v inputs: %v", wire.OpName(req.Op), err)
	}
	var region *wire.Region
	if req.Shm {
		s.mu.Lock()
		region = s.regions[req.ShmPath]
		s.mu.Unlock()
		if region == nil {
			return s.refuse(stream, "%v: no shared region %q was offered at Hello", wire.OpName(req.Op), req.ShmPath)
		}
	}
	var ins []wire.Value
	if region != nil {
		if s.opts.BorrowInputs {
			ins, err = region.Borrow(req.Inputs, sizes)
		} else {
			ins, err = region.Get(req.Inputs, sizes)
		}
		if err == nil {
			// Nothing may follow the request.
			_, err = wire.Recv(stream.Recv, nil, nil)
		}
	} else {
		ins, err = wire.Recv(stream.Recv, req.Inputs, sizes)
	}
	if err != nil {
		return s.refuse(stream, "%v inputs: %v", wire.OpName(req.Op), err)
	}
	began := time.Now()
	resp, outs, spent := s.run(stream.Context(), req, ins)
	resp.ComputeNanos = time.Since(began).Nanoseconds()
	if spent != nil {
		// Once the outputs' bytes are in the region or sent, the stage
		// may reuse their memory.
		defer spent()
	}
	if resp.Error != "" {
		outs = nil
	}
	resp.Outputs = resp.Outputs[:0]
	for _, o := range outs {
		resp.Outputs = append(resp.Outputs, o.Meta)
	}
	// Outputs go back the way the inputs came, when they fit: the
	// client holds the region for this call.
	if region != nil && len(outs) > 0 && region.Fits(outs) {
		if err := region.Put(outs); err != nil {
			// The backend's own outputs are wrong: the call fails, as
			// it does when they cannot be sent as chunks.
			return fmt.Errorf("%v outputs: %v", wire.OpName(req.Op), err)
		}
		resp.Shm = true
		return stream.Send(&pb.Frame{Body: &pb.Frame_Response{Response: resp}})
	}
	if err := stream.Send(&pb.Frame{Body: &pb.Frame_Response{Response: resp}}); err != nil {
		return err
	}
	return wire.Send(stream.Send, outs)
}

// offer maps the shared region a client offered at Hello; it reports
// whether the server will use it.
func (s *Server) offer(path string, size int64) bool {
	if path == "" {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.regions[path]; ok {
		return true
	}
	if len(s.regions) >= maxRegions || size > s.opts.Limits.MaxTotalBytes {
		return false
	}
	r, err := wire.OpenRegion(path, size)
	if err != nil {
		return false
	}
	s.regions[path] = r
	return true
}

// refuse answers a call with an error and no outputs.
func (s *Server) refuse(stream pb.Compute_CallServer, format string, args ...any) error {
	return stream.Send(&pb.Frame{Body: &pb.Frame_Response{Response: &pb.Response{Error: fmt.Sprintf(format, args...)}}})
}

// inputSpec is the inputs an op takes: how many, and their dtypes.
var inputSpec = map[pb.Op][]pb.DType{
	pb.Op_OP_FORWARD:        {pb.DType_DTYPE_FLOAT32},
	pb.Op_OP_LOSS:           {pb.DType_DTYPE_FLOAT32, pb.DType_DTYPE_INT32},
	pb.Op_OP_BACKWARD:       {pb.DType_DTYPE_FLOAT32},
	pb.Op_OP_BACKWARD_INPUT: {pb.DType_DTYPE_FLOAT32},
	pb.Op_OP_SET_GRADS:      {pb.DType_DTYPE_FLOAT32},
}

// checkInputs refuses inputs the op does not take, before any bytes are
// read. SetState takes any number of float32 tensors.
func checkInputs(req *pb.Request) error {
	if req.Op == pb.Op_OP_SET_STATE {
		for i, m := range req.Inputs {
			if m.GetDtype() != pb.DType_DTYPE_FLOAT32 {
				return fmt.Errorf("input %d (%q) is %v, want float32", i, m.GetName(), m.GetDtype())
			}
		}
		return nil
	}
	want := inputSpec[req.Op]
	if len(req.Inputs) != len(want) {
		return fmt.Errorf("%d inputs, the operation takes %d", len(req.Inputs), len(want))
	}
	for i, m := range req.Inputs {
		if m.GetDtype() != want[i] {
			return fmt.Errorf("input %d (%q) is %v, want %v", i, m.GetName(), m.GetDtype(), want[i])
		}
	}
	return nil
}

// run performs one operation. A panic in the backend is answered as an
// error rather than ending the server (the stage may be unusable after).
// spent, when not nil, hands the outputs' memory back to the stage.
func (s *Server) run(ctx context.Context, req *pb.Request, ins []wire.Value) (resp *pb.Response, outs []wire.Value, spent func()) {
	defer func() {
		if p := recover(); p != nil {
			resp, outs, spent = &pb.Response{Error: fmt.Sprintf("%v: the %s backend panicked: %v", wire.OpName(req.Op), s.backend.Name(), p)}, nil, nil
		}
	}()
	resp = &pb.Response{}
	fail := func(err error) (*pb.Response, []wire.Value, func()) {
		resp.Error = fmt.Sprintf("%v: %v", wire.OpName(req.Op), err)
		return resp, nil, nil
	}
	switch req.Op {
	case pb.Op_OP_HELLO:
		resp.Hello = &pb.Hello{Version: pb.Version_VERSION_1, Backend: s.backend.Name(), VersionInfo: s.opts.VersionInfo,
			Shm: s.offer(req.ShmPath, req.ShmBytes)}
		return resp, nil, nil
	case pb.Op_OP_LOAD:
		h, d, err := s.load(ctx, req.Load)
		if err != nil {
			return fail(err)
		}
		resp.Stage, resp.Description = h, d
		return resp, nil, nil
	}
	s.mu.Lock()
	e := s.stages[req.Stage]
	s.mu.Unlock()
	if e == nil {
		return fail(fmt.Errorf("no stage %d is loaded", req.Stage))
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return fail(fmt.Errorf("stage %d was unloaded", req.Stage))
	}
	st := e.stage
	mb := int(req.Microbatch)
	if int64(mb) != req.Microbatch {
		return fail(fmt.Errorf("microbatch %d out of range", req.Microbatch))
	}
	var err error
	switch req.Op {
	case pb.Op_OP_UNLOAD:
		e.closed = true
		s.mu.Lock()
		delete(s.stages, req.Stage)
		s.mu.Unlock()
		err = st.Close()
	case pb.Op_OP_ZERO_GRAD:
		err = st.ZeroGrad()
	case pb.Op_OP_FORWARD:
		var y *compute.Tensor
		if y, err = st.Forward(mb, tensor(ins[0])); err == nil {
			spent = e.recycle(y)
			y = s.wrongShapeFailpoint(y)
			outs, err = result("y", y)
		}
	case pb.Op_OP_LOSS:
		var g *compute.Tensor
		if resp.Loss, g, err = st.Loss(mb, tensor(ins[0]), ins[1].I32); err == nil {
			spent = e.recycle(g)
			outs, err = result("grad", g)
		}
	case pb.Op_OP_BACKWARD, pb.Op_OP_BACKWARD_INPUT:
		var g *compute.Tensor
		if req.Op == pb.Op_OP_BACKWARD {
			g, err = st.Backward(mb, tensor(ins[0]))
		} else {
			g, err = st.BackwardInput(mb, tensor(ins[0]))
		}
		if err == nil && g != nil {
			spent = e.recycle(g)
			outs, err = result("grad", g)
		}
	case pb.Op_OP_BACKWARD_WEIGHT:
		err = st.BackwardWeight(mb)
	case pb.Op_OP_KEEP_CONTRIBUTIONS:
		err = st.KeepContributions(req.Keep)
	case pb.Op_OP_CONTRIBUTION:
		var c []float32
		if c, err = st.Contribution(mb); err == nil {
			outs = []wire.Value{wire.Float32("contribution", []int{len(c)}, c)}
		}
	case pb.Op_OP_GRADS:
		var g []float32
		if g, err = st.Grads(); err == nil {
			outs = []wire.Value{wire.Float32("grads", []int{len(g)}, g)}
		}
	case pb.Op_OP_SET_GRADS:
		if len(ins[0].Meta.Shape) != 1 {
			err = fmt.Errorf("the gradient has shape %v, want a flat [n]", ins[0].Meta.Shape)
		} else {
			err = st.SetGrads(ins[0].F32)
		}
	case pb.Op_OP_SCALE_GRADS:
		err = st.ScaleGrads(req.Scale)
	case pb.Op_OP_SUM_SQUARES:
		resp.SumSquares, err = st.SumSquares()
	case pb.Op_OP_STEP:
		if req.Step == nil {
			err = errors.New("no step arguments")
		} else {
			err = st.Step(int(req.Step.Step), req.Step.Lr, req.Step.Clip)
		}
	case pb.Op_OP_STATE:
		var states []compute.ParamState
		if states, err = st.State(); err == nil {
			outs = wire.StateValues(states)
		}
	case pb.Op_OP_SET_STATE:
		var states []compute.ParamState
		if states, err = wire.ParseState(st.Describe(), ins); err == nil {
			err = st.SetState(states)
		}
	default:
		err = fmt.Errorf("unknown operation %d", req.Op)
	}
	if err != nil {
		return fail(err)
	}
	return resp, outs, spent
}

// load builds a stage and gives it a handle.
func (s *Server) load(ctx context.Context, a *pb.LoadArgs) (int64, *pb.Description, error) {
	if a == nil {
		return 0, nil, errors.New("no load arguments")
	}
	s.mu.Lock()
	n := len(s.stages)
	s.mu.Unlock()
	if n >= s.opts.MaxStages {
		return 0, nil, fmt.Errorf("%d stages are loaded, the limit", n)
	}
	st, err := s.backend.Load(ctx, compute.LoadSpec{
		Model: a.ModelJson, Optim: a.OptimJson,
		Shard: compute.ShardSpec{Lo: int(a.Lo), Hi: int(a.Hi), Embed: a.Embed, Head: a.Head},
	})
	if err != nil {
		return 0, nil, err
	}
	s.mu.Lock()
	s.next++
	h := s.next
	s.stages[h] = &entry{stage: st}
	s.mu.Unlock()
	return h, DescriptionProto(st.Describe()), nil
}

// tensor is a received float32 value as a compute.Tensor.
func tensor(v wire.Value) *compute.Tensor {
	return &compute.Tensor{Shape: v.Shape(), Data: v.F32}
}

// result is a tensor the backend returned, as one output; its data must
// match its shape.
func result(name string, t *compute.Tensor) ([]wire.Value, error) {
	if t == nil {
		return nil, fmt.Errorf("the backend returned no %s tensor", name)
	}
	return []wire.Value{wire.Float32(name, t.Shape, t.Data)}, nil
}

// DescriptionProto is d on the wire.
func DescriptionProto(d compute.Description) *pb.Description {
	out := &pb.Description{Backend: d.Backend, Width: int64(d.Width), SplitBackward: d.Caps.SplitBackward}
	for _, p := range d.Params {
		shape := make([]int64, len(p.Shape))
		for i, x := range p.Shape {
			shape[i] = int64(x)
		}
		out.Params = append(out.Params, &pb.ParamInfo{Name: p.Name, Index: int64(p.Index), Shape: shape, Decay: p.Decay})
	}
	return out
}

// wrongShapeFailpoint drops the last sequence of y on the Forward call
// that failpoint.ComputeWrongShape names (fault tests only; unarmed, it
// returns y).
func (s *Server) wrongShapeFailpoint(y *compute.Tensor) *compute.Tensor {
	v, ok := failpoint.Value(failpoint.ComputeWrongShape)
	if !ok || len(y.Shape) == 0 || y.Shape[0] < 1 {
		return y
	}
	n := s.forwards.Add(1)
	at, once, _ := strings.Cut(v, ":")
	if at != strconv.FormatInt(n, 10) {
		return y
	}
	if once != "" {
		f, err := os.OpenFile(once, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
		if err != nil {
			return y // another process lied first
		}
		f.Close()
	}
	shape := append([]int(nil), y.Shape...)
	shape[0]--
	return &compute.Tensor{Shape: shape, Data: y.Data[:len(y.Data)/y.Shape[0]*shape[0]]}
}
