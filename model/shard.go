package model

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"

	"stagecoach/internal/spare"
	"stagecoach/internal/vecf32"
)

// Activations is what travels between shards: a flat float32 buffer and its
// shape. Hidden states have shape [B, T, Dim]; the embedding shard's input
// is the token ids as float32 with shape [B, T] (bytes are exact in float32).
// Gradients use the same type and shape as the hidden states they belong to.
type Activations struct {
	Shape []int
	Data  []float32
}

// TokenActivations wraps b sequences of t token ids for the embedding shard.
func TokenActivations(tokens []int32, b, t int) *Activations {
	d := make([]float32, len(tokens))
	for i, v := range tokens {
		d[i] = float32(v)
	}
	return &Activations{Shape: []int{b, t}, Data: d}
}

// MarshalBinary encodes as: u32 rank, rank×u32 dims, then the float32 data,
// all little-endian — a flat form for the wire.
func (a *Activations) MarshalBinary() ([]byte, error) {
	out := make([]byte, 4+4*len(a.Shape)+4*len(a.Data))
	binary.LittleEndian.PutUint32(out, uint32(len(a.Shape)))
	o := 4
	for _, d := range a.Shape {
		binary.LittleEndian.PutUint32(out[o:], uint32(d))
		o += 4
	}
	for _, v := range a.Data {
		binary.LittleEndian.PutUint32(out[o:], math.Float32bits(v))
		o += 4
	}
	return out, nil
}

// UnmarshalBinary decodes MarshalBinary's form, rejecting inconsistent input.
func (a *Activations) UnmarshalBinary(b []byte) error {
	if len(b) < 4 {
		return errors.New("model: activations: truncated header")
	}
	rank := int(binary.LittleEndian.Uint32(b))
	if rank > 8 || len(b) < 4+4*rank {
		return fmt.Errorf("model: activations: bad rank %d", rank)
	}
	shape := make([]int, rank)
	n := 1
	for i := range shape {
		shape[i] = int(binary.LittleEndian.Uint32(b[4+4*i:]))
		if shape[i] > 1<<31 || (shape[i] > 0 && n > (1<<40)/shape[i]) {
			return errors.New("model: activations: shape too large")
		}
		n *= shape[i]
	}
	body := b[4+4*rank:]
	if len(body) != 4*n {
		return fmt.Errorf("model: activations: shape %v needs %d bytes of data, have %d", shape, 4*n, len(body))
	}
	data := make([]float32, n)
	for i := range data {
		data[i] = math.Float32frombits(binary.LittleEndian.Uint32(body[4*i:]))
	}
	a.Shape, a.Data = shape, data
	return nil
}

type blockParams struct{ norm1, wqkv, wo, norm2, w1, w2 *Tensor }

// blockCache holds what one block's backward needs for one microbatch.
type blockCache struct {
	h1, r1, qkv, p, att, x2, h2, r2, u, th, a []float32
}

// mbCache holds one microbatch's saved activations inside a shard.
type mbCache struct {
	b, t   int
	tokens []int32
	res    [][]float32 // residual stream: res[j] is block j's input
	// tokens and res are sized by ShardActivationFloats, blocks by
	// BlockActivationFloats (TestMemoryFormulasMatchAllocations).
	blocks []blockCache
}

// Shard is a contiguous range of transformer blocks, optionally with the
// embedding (always the first shard) and the final norm + head + loss (the
// first or the last shard, see Layout).
//
// Per training step the driver calls ZeroGrad, then for each microbatch that
// visits the shard Forward (saving activations under the microbatch id),
// Loss on the head shard, and Backward with the same id; then FinishGrad.
//
// Exactness contract. Each Backward (and each Loss on the head shard)
// computes the microbatch's parameter gradients into zeroed scratch
// buffers — its contribution c_mb — and then adds it to the shard's
// gradients with one float32 addition per element, so a gradient is
// (((0 + c_0) + c_1) + ...) over microbatches in call order. The reference
// order is ascending microbatch id: Backward calls on a shard must come in
// ascending microbatch order, and so must Loss calls on the head shard
// (Forward order does not matter). Summing whole contributions (rather
// than letting each product accumulate into the running gradient) is what
// lets data-parallel replicas, each computing some microbatches, reproduce
// the same sums exactly: see SetContributionSink. FinishGrad then multiplies every
// gradient by 1/v, where v is the number of microbatches that visited the
// shard (called Forward) since ZeroGrad — for a full pipeline that is the
// microbatch count m; a shard skipped by some microbatches divides by fewer.
// Each microbatch's loss is the mean over its B·T tokens and is not scaled
// by 1/m before backward. Any driver, in one process or across many, that
// keeps this order gets bit-identical gradients.
//
// Skipping a shard for a microbatch is simply not calling it: blocks are
// residual, so the hidden state passes through unchanged (identity).
type Shard struct {
	cfg    Config
	spec   ShardSpec
	params []*Tensor

	tokEmb, posEmb *Tensor
	blocks         []blockParams
	normF, head    *Tensor

	caches map[int]*mbCache
	pool   []*mbCache
	visits int

	// lossParams are the parameters Loss adds gradients to (the final
	// norm and the head), bodyParams those Backward adds to (the rest).
	lossParams, bodyParams []*Tensor
	// scratch[p] receives parameter p's contribution during a call;
	// sink, when set, takes contributions instead of G.
	scratch map[*Tensor][]float32
	sink    func(mb int, ps []*Tensor, contrib [][]float32)
	// oneProduct holds the matrices whose contribution is a single
	// product that overwrites its scratch, which therefore needs no
	// clearing (see contribute).
	oneProduct map[*Tensor]bool
	// held keeps the gradients swapped out during a call; contrib
	// gathers the scratch buffers for the sink.
	held, contrib [][]float32

	// backward and loss scratch, reused across microbatches
	sN                         int
	dx, dh, datt, dqkv, da, ds []float32
	hf, rf, logits, dhf        []float32
	// spare holds outputs handed back by Recycle, for the next outputs.
	spare spare.Buffers
}

// maxSpare bounds the buffers Recycle keeps: an output and a gradient of
// each of two microbatches in flight.
const maxSpare = 4

// Recycle hands back the data of an output of Forward, Backward or Loss
// once the caller is done with it: a later output that fits reuses it
// instead of fresh memory, whose first writes fault its pages in (a
// process serving one stage, whose heap the Go runtime keeps returning
// to the system, spent a tenth of a stage's time in those faults). The
// caller must not touch data afterwards.
func (s *Shard) Recycle(data []float32) { s.spare.Put(data) }

// output returns n zeroed floats for an output the caller will own: a
// recycled buffer when one fits.
func (s *Shard) output(n int) []float32 {
	b := s.spare.Get(n)
	clear(b)
	return b
}

// NewShard builds a shard with freshly initialised parameters.
func NewShard(cfg Config, spec ShardSpec) (*Shard, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if spec.Lo < 0 || spec.Hi < spec.Lo || spec.Hi > cfg.Layers {
		return nil, fmt.Errorf("model: shard blocks [%d,%d) outside 0..%d", spec.Lo, spec.Hi, cfg.Layers)
	}
	s := &Shard{cfg: cfg, spec: spec, caches: map[int]*mbCache{}, spare: spare.Buffers{Max: maxSpare}}
	D, Hd := cfg.Dim, cfg.Hidden
	add := func(t *Tensor) *Tensor { s.params = append(s.params, t); return t }
	if spec.Embed {
		s.tokEmb = add(newTensor(cfg, "tok_emb", 0, []int{cfg.Vocab, D}, initNormal))
		s.posEmb = add(newTensor(cfg, "pos_emb", 1, []int{cfg.Ctx, D}, initNormal))
	}
	for l := spec.Lo; l < spec.Hi; l++ {
		nm := func(j int) (string, int) {
			return fmt.Sprintf("blocks.%d.%s", l, blockTensorNames[j]), blockTensorIndex(l, j)
		}
		var bp blockParams
		n, i := nm(0)
		bp.norm1 = add(newTensor(cfg, n, i, []int{D}, initOnes))
		n, i = nm(1)
		bp.wqkv = add(newTensor(cfg, n, i, []int{D, 3 * D}, initNormal))
		n, i = nm(2)
		bp.wo = add(newTensor(cfg, n, i, []int{D, D}, initResidualOut))
		n, i = nm(3)
		bp.norm2 = add(newTensor(cfg, n, i, []int{D}, initOnes))
		n, i = nm(4)
		bp.w1 = add(newTensor(cfg, n, i, []int{D, Hd}, initNormal))
		n, i = nm(5)
		bp.w2 = add(newTensor(cfg, n, i, []int{Hd, D}, initResidualOut))
		s.blocks = append(s.blocks, bp)
	}
	nBody := len(s.params)
	if spec.Head {
		last := 2 + cfg.Layers*perBlock
		s.normF = add(newTensor(cfg, "norm_f", last, []int{D}, initOnes))
		s.head = add(newTensor(cfg, "head", last+1, []int{D, cfg.Vocab}, initNormal))
		s.lossParams = []*Tensor{s.normF, s.head}
	}
	s.bodyParams = s.params[:nBody:nBody]
	s.scratch = map[*Tensor][]float32{}
	for _, p := range s.params {
		s.scratch[p] = make([]float32, len(p.G))
	}
	s.oneProduct = map[*Tensor]bool{}
	for _, bp := range s.blocks {
		for _, p := range []*Tensor{bp.wqkv, bp.wo, bp.w1, bp.w2} {
			s.oneProduct[p] = true
		}
	}
	if spec.Head {
		s.oneProduct[s.head] = true
	}
	return s, nil
}

// SetContributionSink hands every microbatch's parameter-gradient
// contribution to sink (Loss: the final norm and head; Backward: the
// other parameters) instead of adding it to G, which then stays zero.
// A data-parallel replica uses it to keep its microbatches' contributions
// apart, so that they can be summed with the other replicas' in global
// microbatch order exactly as one process would sum them. The slices are
// reused after sink returns. nil restores normal accumulation.
func (s *Shard) SetContributionSink(sink func(mb int, ps []*Tensor, contrib [][]float32)) {
	s.sink = sink
}

// contribute runs fn, which adds one microbatch's gradients to the G of
// ps, with each G swapped for a zeroed scratch buffer; then it adds the
// scratch into G element by element (or hands it to the sink).
//
// The matrices in oneProduct are the exception: fn overwrites their
// scratch with one product (beta = 0) instead of adding it to zeros.
// That gives the same bits: the product's sums start from +0 in
// registers, so no element of it is -0, and +0 + v is v for every other v.
// Skipping the clear and the product's read of C saves two passes over
// every weight matrix per microbatch.
func (s *Shard) contribute(mb int, ps []*Tensor, fn func()) {
	s.held = s.held[:0]
	for _, p := range ps {
		sc := s.scratch[p]
		if !s.oneProduct[p] {
			clear(sc)
		}
		s.held = append(s.held, p.G)
		p.G = sc
	}
	fn()
	s.contrib = s.contrib[:0]
	for i, p := range ps {
		c := p.G
		p.G = s.held[i]
		if s.sink != nil {
			s.contrib = append(s.contrib, c)
			continue
		}
		vecf32.Add(p.G, c)
	}
	if s.sink != nil {
		s.sink(mb, ps, s.contrib)
	}
}

// Config returns the model config (with defaults filled in).
func (s *Shard) Config() Config { return s.cfg }

// Spec returns what the shard holds.
func (s *Shard) Spec() ShardSpec { return s.spec }

// Params returns the shard's parameters in canonical order.
func (s *Shard) Params() []*Tensor { return s.params }

// Visits is the number of microbatches that called Forward since ZeroGrad.
func (s *Shard) Visits() int { return s.visits }

// ZeroGrad clears gradients and the visit count and drops any saved
// activations, starting a new step.
func (s *Shard) ZeroGrad() {
	for _, p := range s.params {
		clear(p.G)
	}
	s.visits = 0
	for mb, c := range s.caches {
		s.pool = append(s.pool, c)
		delete(s.caches, mb)
	}
}

// FinishGrad divides the accumulated gradients by the visit count (see the
// exactness contract on Shard) and returns that count.
func (s *Shard) FinishGrad() int {
	if s.visits > 1 {
		inv := 1 / float32(s.visits)
		for _, p := range s.params {
			for i := range p.G {
				p.G[i] *= inv
			}
		}
	}
	return s.visits
}

// Pending reports how many microbatches have saved activations awaiting
// Backward.
func (s *Shard) Pending() int { return len(s.caches) }

// Release drops a microbatch's saved activations without a backward pass
// (evaluation, or abandoning a microbatch).
func (s *Shard) Release(mb int) {
	if c, ok := s.caches[mb]; ok {
		delete(s.caches, mb)
		s.pool = append(s.pool, c)
	}
}

func (s *Shard) getCache(b, t int) *mbCache {
	for i, c := range s.pool {
		if c.b == b && c.t == t {
			s.pool[i] = s.pool[len(s.pool)-1]
			s.pool = s.pool[:len(s.pool)-1]
			return c
		}
	}
	if len(s.pool) > 0 { // wrong size: drop one so the pool stays bounded
		s.pool = s.pool[:len(s.pool)-1]
	}
	D, Hd, H := s.cfg.Dim, s.cfg.Hidden, s.cfg.Heads
	n := b * t
	c := &mbCache{b: b, t: t}
	if s.spec.Embed {
		c.tokens = make([]int32, n)
	}
	// Block j's input; the last block writes the caller's buffer.
	c.res = make([][]float32, max(len(s.blocks), 1))
	for i := range c.res {
		c.res[i] = make([]float32, n*D)
	}
	c.blocks = make([]blockCache, len(s.blocks))
	for i := range c.blocks {
		c.blocks[i] = blockCache{
			h1: make([]float32, n*D), r1: make([]float32, n),
			qkv: make([]float32, n*3*D), p: make([]float32, b*H*t*t),
			att: make([]float32, n*D), x2: make([]float32, n*D),
			h2: make([]float32, n*D), r2: make([]float32, n),
			u: make([]float32, n*Hd), th: make([]float32, n*Hd), a: make([]float32, n*Hd),
		}
	}
	return c
}

func (s *Shard) ensureScratch(b, t int) {
	n := b * t
	if n <= s.sN && len(s.ds) >= attnScratch(t) {
		return
	}
	n = max(n, s.sN)
	D := s.cfg.Dim
	s.sN = n
	s.dx, s.dh, s.datt = make([]float32, n*D), make([]float32, n*D), make([]float32, n*D)
	s.dqkv, s.da = make([]float32, n*3*D), make([]float32, n*s.cfg.Hidden)
	s.ds = make([]float32, max(attnScratch(t), len(s.ds)))
	if s.spec.Head {
		s.hf, s.rf, s.dhf = make([]float32, n*D), make([]float32, n), make([]float32, n*D)
		s.logits = make([]float32, n*s.cfg.Vocab)
	}
}

// inputDims checks x's shape and returns (B, T).
func (s *Shard) inputDims(x *Activations, tokens bool) (int, int, error) {
	if x == nil {
		return 0, 0, errors.New("model: nil activations")
	}
	want := 3
	if tokens {
		want = 2
	}
	if len(x.Shape) != want {
		return 0, 0, fmt.Errorf("model: shard [%d,%d) wants rank-%d input, got shape %v", s.spec.Lo, s.spec.Hi, want, x.Shape)
	}
	b, t := x.Shape[0], x.Shape[1]
	if b < 1 || t < 1 || t > s.cfg.Ctx {
		return 0, 0, fmt.Errorf("model: input shape %v: need B ≥ 1 and 1 ≤ T ≤ ctx %d", x.Shape, s.cfg.Ctx)
	}
	if !tokens && x.Shape[2] != s.cfg.Dim {
		return 0, 0, fmt.Errorf("model: hidden shape %v: last dimension must be dim %d", x.Shape, s.cfg.Dim)
	}
	n := b * t
	if !tokens {
		n *= s.cfg.Dim
	}
	if len(x.Data) != n {
		return 0, 0, fmt.Errorf("model: shape %v needs %d values, got %d", x.Shape, n, len(x.Data))
	}
	return b, t, nil
}

// Forward runs microbatch mb through the shard and saves what Backward
// needs. On the embedding shard x holds token ids (shape [B,T]); otherwise
// hidden states [B,T,Dim]. The result is a fresh buffer owned by the caller.
func (s *Shard) Forward(mb int, x *Activations) (*Activations, error) {
	if _, dup := s.caches[mb]; dup {
		return nil, fmt.Errorf("model: microbatch %d already has saved activations on shard [%d,%d)", mb, s.spec.Lo, s.spec.Hi)
	}
	b, t, err := s.inputDims(x, s.spec.Embed)
	if err != nil {
		return nil, err
	}
	c := s.getCache(b, t)
	D := s.cfg.Dim
	if s.spec.Embed {
		for i, v := range x.Data {
			tok := int32(v)
			if float32(tok) != v || tok < 0 || int(tok) >= s.cfg.Vocab {
				s.pool = append(s.pool, c)
				return nil, fmt.Errorf("model: token %v at %d is not an id in [0,%d)", v, i, s.cfg.Vocab)
			}
			c.tokens[i] = tok
		}
		embedForward(c.tokens, s.tokEmb.W, s.posEmb.W, c.res[0], b, t, D)
	} else {
		copy(c.res[0], x.Data)
	}
	// The last block writes straight into the caller's buffer: Backward
	// needs every block's input, never the shard's output.
	out := s.output(b * t * D)
	last := len(s.blocks) - 1
	for j := range s.blocks {
		dst := out
		if j < last {
			dst = c.res[j+1]
		}
		s.blockForward(j, c, c.res[j], dst)
	}
	if last < 0 {
		copy(out, c.res[0])
	}
	s.caches[mb] = c
	s.visits++
	return &Activations{Shape: []int{b, t, D}, Data: out}, nil
}

// Backward takes ∂L/∂output for microbatch mb, adds the shard's parameter
// gradients and returns ∂L/∂input (nil on the embedding shard, which has no
// upstream). The saved activations are released.
func (s *Shard) Backward(mb int, grad *Activations) (*Activations, error) {
	c, ok := s.caches[mb]
	if !ok {
		return nil, fmt.Errorf("model: backward for microbatch %d without a forward on shard [%d,%d)", mb, s.spec.Lo, s.spec.Hi)
	}
	b, t, err := s.inputDims(grad, false)
	if err != nil {
		return nil, err
	}
	if b != c.b || t != c.t {
		return nil, fmt.Errorf("model: gradient shape %v does not match forward [%d %d %d]", grad.Shape, c.b, c.t, s.cfg.Dim)
	}
	s.ensureScratch(b, t)
	n := b * t * s.cfg.Dim
	// ∂L/∂input accumulates in the buffer handed back to the caller (a
	// scratch one on the embedding shard, which hands back nothing).
	dx := s.dx[:n]
	if !s.spec.Embed {
		dx = s.output(n)
	}
	// The last block reads the caller's gradient and writes dx; the
	// others turn dx over in place.
	dy := grad.Data[:n]
	if len(s.blocks) == 0 {
		copy(dx, dy)
	}
	s.contribute(mb, s.bodyParams, func() {
		for j := len(s.blocks) - 1; j >= 0; j-- {
			s.blockBackward(j, c, c.res[j], dy, dx)
			dy = dx
		}
		if s.spec.Embed {
			embedBackward(c.tokens, dx, s.tokEmb.G, s.posEmb.G, b, t, s.cfg.Dim)
		}
	})
	delete(s.caches, mb)
	s.pool = append(s.pool, c)
	if s.spec.Embed {
		return nil, nil
	}
	return &Activations{Shape: []int{b, t, s.cfg.Dim}, Data: dx}, nil
}

// Loss applies the final norm, head and cross-entropy to hidden (shape
// [B,T,Dim]) against targets (B·T ids), adds the head's parameter gradients,
// and returns the mean token loss and ∂loss/∂hidden. Only the head shard has
// a loss. mb is the microbatch id (Loss calls must come in ascending mb order
// for exactness).
func (s *Shard) Loss(mb int, hidden *Activations, targets []int32) (float64, *Activations, error) {
	var loss float64
	var g *Activations
	var err error
	s.contribute(mb, s.lossParams, func() { loss, g, err = s.loss(hidden, targets, true) })
	return loss, g, err
}

// EvalLoss is Loss without any gradient work.
func (s *Shard) EvalLoss(hidden *Activations, targets []int32) (float64, error) {
	loss, _, err := s.loss(hidden, targets, false)
	return loss, err
}

func (s *Shard) loss(hidden *Activations, targets []int32, grad bool) (float64, *Activations, error) {
	if !s.spec.Head {
		return 0, nil, fmt.Errorf("model: shard [%d,%d) has no output head", s.spec.Lo, s.spec.Hi)
	}
	b, t, err := s.inputDims(hidden, false)
	if err != nil {
		return 0, nil, err
	}
	n := b * t
	if len(targets) != n {
		return 0, nil, fmt.Errorf("model: %d targets for %d positions", len(targets), n)
	}
	V, D := s.cfg.Vocab, s.cfg.Dim
	for i, tg := range targets {
		if tg < 0 || int(tg) >= V {
			return 0, nil, fmt.Errorf("model: target %d at %d outside [0,%d)", tg, i, V)
		}
	}
	s.ensureScratch(b, t)
	hf, rf, logits := s.hf[:n*D], s.rf[:n], s.logits[:n*V]
	rmsnormForward(hidden.Data, s.normF.W, hf, rf, n, D)
	gemm(false, false, n, V, D, hf, D, s.head.W, V, false, logits, V)
	total := crossEntropy(logits, targets, n, V)
	if !grad {
		return total / float64(n), nil, nil
	}
	gemm(true, false, D, V, n, hf, D, logits, V, false, s.head.G, V) // overwrites: see contribute
	dhf := s.dhf[:n*D]
	gemm(false, true, n, D, V, logits, V, s.head.W, V, false, dhf, D)
	gx := s.output(n * D)
	rmsnormBackward(hidden.Data, s.normF.W, rf, dhf, gx, gx, s.normF.G, n, D)
	return total / float64(n), &Activations{Shape: []int{b, t, D}, Data: gx}, nil
}

// ForwardEval runs x through the shard without keeping anything for
// backward and without counting a visit.
func (s *Shard) ForwardEval(x *Activations) (*Activations, error) {
	const evalMB = math.MinInt
	out, err := s.Forward(evalMB, x)
	if err != nil {
		return nil, err
	}
	s.Release(evalMB)
	s.visits--
	return out, nil
}

func embedForward(tokens []int32, tok, pos, out []float32, b, t, d int) {
	for bi := 0; bi < b; bi++ {
		for ti := 0; ti < t; ti++ {
			i := bi*t + ti
			o := out[i*d : (i+1)*d]
			e := tok[int(tokens[i])*d:]
			p := pos[ti*d:]
			for j := range o {
				o[j] = e[j] + p[j]
			}
		}
	}
}

// embedBackward scatters row gradients in ascending position order.
func embedBackward(tokens []int32, dx, dtok, dpos []float32, b, t, d int) {
	for bi := 0; bi < b; bi++ {
		for ti := 0; ti < t; ti++ {
			i := bi*t + ti
			g := dx[i*d : (i+1)*d]
			e := dtok[int(tokens[i])*d:]
			p := dpos[ti*d:]
			vecf32.Add(e[:d], g)
			vecf32.Add(p[:d], g)
		}
	}
}

func (s *Shard) blockForward(j int, c *mbCache, x, out []float32) {
	bp := &s.blocks[j]
	bc := &c.blocks[j]
	b, t := c.b, c.t
	n, D, Hd := b*t, s.cfg.Dim, s.cfg.Hidden
	rmsnormForward(x, bp.norm1.W, bc.h1, bc.r1, n, D)
	gemm(false, false, n, 3*D, D, bc.h1, D, bp.wqkv.W, 3*D, false, bc.qkv, 3*D)
	attnForward(bc.qkv, bc.p, bc.att, b, t, D, s.cfg.Heads)
	gemm(false, false, n, D, D, bc.att, D, bp.wo.W, D, false, bc.x2, D)
	addRows(bc.x2, x, n, D)
	rmsnormForward(bc.x2, bp.norm2.W, bc.h2, bc.r2, n, D)
	gemm(false, false, n, Hd, D, bc.h2, D, bp.w1.W, Hd, false, bc.u, Hd)
	geluForward(bc.u, bc.a, bc.th, n, Hd)
	gemm(false, false, n, D, Hd, bc.a, Hd, bp.w2.W, D, false, out, D)
	addRows(out, bc.x2, n, D)
}

// blockBackward writes ∂L/∂(block input) into dx given ∂L/∂(block output)
// in dy (which may be dx: then in place), adding the block's parameter
// gradients. dy is read only until the first RMSNorm's input gradient is
// added to it.
func (s *Shard) blockBackward(j int, c *mbCache, x, dy, dx []float32) {
	bp := &s.blocks[j]
	bc := &c.blocks[j]
	b, t := c.b, c.t
	n, D, Hd := b*t, s.cfg.Dim, s.cfg.Hidden
	da, dh, datt, dqkv := s.da[:n*Hd], s.dh[:n*D], s.datt[:n*D], s.dqkv[:n*3*D]
	// The weight gradients overwrite their scratch (see contribute).
	// MLP: out = x2 + gelu(h2·W1)·W2
	gemm(true, false, Hd, D, n, bc.a, Hd, dy, D, false, bp.w2.G, D)
	gemm(false, true, n, Hd, D, dy, D, bp.w2.W, D, false, da, Hd)
	geluBackward(bc.u, bc.th, da, n, Hd)
	gemm(true, false, D, Hd, n, bc.h2, D, da, Hd, false, bp.w1.G, Hd)
	gemm(false, true, n, D, Hd, da, Hd, bp.w1.W, Hd, false, dh, D)
	rmsnormBackward(bc.x2, bp.norm2.W, bc.r2, dh, dy, dx, bp.norm2.G, n, D)
	// attention: x2 = x + attn(h1)·Wo
	gemm(true, false, D, D, n, bc.att, D, dx, D, false, bp.wo.G, D)
	gemm(false, true, n, D, D, dx, D, bp.wo.W, D, false, datt, D)
	attnBackward(bc.qkv, bc.p, datt, dqkv, s.ds, b, t, D, s.cfg.Heads)
	gemm(true, false, D, 3*D, n, bc.h1, D, dqkv, 3*D, false, bp.wqkv.G, 3*D)
	gemm(false, true, n, D, 3*D, dqkv, 3*D, bp.wqkv.W, 3*D, false, dh, D)
	rmsnormBackward(x, bp.norm1.W, bc.r1, dh, dx, dx, bp.norm1.G, n, D)
}
