// Package model is Stagecoach's reference model: a byte-level decoder-only
// transformer (token embedding + learned positions, pre-norm residual blocks
// with RMSNorm, causal multi-head attention and a GELU MLP, final RMSNorm,
// output head, softmax cross-entropy) with hand-written forward and backward
// passes over gonum's float32 BLAS.
//
// The model is built from stage shards (see Shard) so the same code runs in
// one process (one shard holding every block) and in a pipeline (one shard per
// worker). Everything is deterministic: a run's result depends only on the
// seed, the data, the model config and the microbatch split, and a pipelined
// run that follows the ordering contract documented on Shard reproduces the
// single-process trainer bit for bit.
package model

import (
	"errors"
	"fmt"
	"hash/fnv"
	"math"
	"math/rand/v2"
)

// Config is the model shape. Zero fields take defaults (see WithDefaults).
type Config struct {
	Vocab   int     `json:"vocab"`
	Layers  int     `json:"layers"`
	Dim     int     `json:"dim"`
	Heads   int     `json:"heads"`
	Ctx     int     `json:"ctx"`
	Hidden  int     `json:"hidden"` // MLP width, default 4·Dim
	Seed    uint64  `json:"seed"`
	InitStd float64 `json:"init_std"` // default 0.02
}

// WithDefaults fills zero fields with the defaults.
func (c Config) WithDefaults() Config {
	if c.Vocab == 0 {
		c.Vocab = 256
	}
	if c.Hidden == 0 {
		c.Hidden = 4 * c.Dim
	}
	if c.InitStd == 0 {
		c.InitStd = 0.02
	}
	return c
}

// Validate reports a config the model cannot be built from.
func (c Config) Validate() error {
	switch {
	case c.Vocab < 1:
		return errors.New("model: vocab must be positive")
	case c.Layers < 0:
		return errors.New("model: layers must not be negative")
	case c.Dim < 1 || c.Heads < 1 || c.Ctx < 1 || c.Hidden < 1:
		return fmt.Errorf("model: dim, heads, ctx and hidden must be positive (got dim %d heads %d ctx %d hidden %d)", c.Dim, c.Heads, c.Ctx, c.Hidden)
	case c.Dim%c.Heads != 0:
		return fmt.Errorf("model: dim %d is not divisible by heads %d", c.Dim, c.Heads)
	case c.InitStd <= 0 || math.IsNaN(c.InitStd) || math.IsInf(c.InitStd, 0):
		return errors.New("model: init_std must be positive and finite")
	}
	return nil
}

// Tensor is one parameter with its gradient buffer.
type Tensor struct {
	Name  string
	Index int // position in the canonical whole-model order (see TensorNames)
	Shape []int
	W     []float32 // weights
	G     []float32 // accumulated gradient
	Decay bool      // weight decay applies (matrices and embeddings, not norm gains)
}

// Parameter names, in canonical order: tok_emb, pos_emb, then per block
// blocks.i.{norm1, wqkv, wo, norm2, w1, w2}, then norm_f, head.
const perBlock = 6

var blockTensorNames = [perBlock]string{"norm1", "wqkv", "wo", "norm2", "w1", "w2"}

// TensorNames lists every parameter of the whole model in canonical order.
// The canonical order fixes the summation order of the global gradient norm.
func TensorNames(c Config) []string {
	names := []string{"tok_emb", "pos_emb"}
	for l := 0; l < c.Layers; l++ {
		for _, n := range blockTensorNames {
			names = append(names, fmt.Sprintf("blocks.%d.%s", l, n))
		}
	}
	return append(names, "norm_f", "head")
}

func blockTensorIndex(layer, j int) int { return 2 + layer*perBlock + j }

// newTensor creates and initialises a parameter. The initial values come
// from a PCG generator seeded by (model seed, FNV-1a of the tensor name), so
// a tensor's init never depends on which shard builds it or in which order.
func newTensor(c Config, name string, index int, shape []int, kind initKind) *Tensor {
	n := 1
	for _, d := range shape {
		n *= d
	}
	t := &Tensor{Name: name, Index: index, Shape: shape, W: make([]float32, n), G: make([]float32, n), Decay: kind != initOnes}
	switch kind {
	case initOnes:
		for i := range t.W {
			t.W[i] = 1
		}
	default:
		h := fnv.New64a()
		h.Write([]byte(name))
		rng := rand.New(rand.NewPCG(c.Seed, h.Sum64()))
		std := c.InitStd
		if kind == initResidualOut {
			// GPT-2 style: keep the residual stream's variance independent of depth.
			std /= math.Sqrt(2 * float64(max(c.Layers, 1)))
		}
		for i := range t.W {
			t.W[i] = float32(rng.NormFloat64() * std)
		}
	}
	return t
}

type initKind int

const (
	initNormal initKind = iota
	initResidualOut
	initOnes
)

// Layout says which shard owns the final norm, output head and loss.
type Layout int

const (
	// HeadFirst: shard 0 owns embedding and head; a microbatch starts and
	// ends at stage 0 (SkipPipe).
	HeadFirst Layout = iota
	// HeadLast: the last shard owns the head (classic GPipe).
	HeadLast
)

// ShardSpec is the part of the model a shard holds: blocks [Lo,Hi), plus the
// embedding and/or head.
type ShardSpec struct {
	Lo, Hi int
	Embed  bool
	Head   bool
}

// Split cuts a model of the given layer count into stages contiguous shards,
// as even as possible (earlier shards take the remainder). Shard 0 always
// owns the embedding; layout picks the head's owner.
func Split(layers, stages int, layout Layout) ([]ShardSpec, error) {
	if stages < 1 {
		return nil, fmt.Errorf("model: need at least one stage, got %d", stages)
	}
	if stages > max(layers, 1) {
		return nil, fmt.Errorf("model: cannot split %d layers into %d stages", layers, stages)
	}
	specs := make([]ShardSpec, stages)
	lo := 0
	for i := range specs {
		n := layers / stages
		if i < layers%stages {
			n++
		}
		specs[i] = ShardSpec{Lo: lo, Hi: lo + n}
		lo += n
	}
	specs[0].Embed = true
	if layout == HeadFirst {
		specs[0].Head = true
	} else {
		specs[stages-1].Head = true
	}
	return specs, nil
}
