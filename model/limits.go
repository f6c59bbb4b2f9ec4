package model

import (
	"fmt"
)

// Limits bound a model built from untrusted input (a Configure request, a
// checkpoint's metadata) before anything is allocated: a config whose
// fields are each plausible can still ask for tens of gigabytes.
type Limits struct {
	// MaxParams bounds the whole model's parameter count. Training keeps
	// 16 bytes per parameter (weights, gradients, two optimizer moments).
	MaxParams int64 `json:"max_params"`
	// MaxActivationBytes bounds ActivationBytes of one microbatch.
	MaxActivationBytes int64 `json:"max_activation_bytes"`
}

// Defaults, sized for a machine of a few tens of GiB shared by several
// workers: 2^28 parameters are 4 GiB of training state, and a
// microbatch's activations may take 4 GiB.
const (
	DefaultMaxParams          = 1 << 28
	DefaultMaxActivationBytes = 4 << 30
)

// Caps on single fields, far above any model this code trains, that
// keep the size arithmetic below from overflowing.
const (
	MaxVocab  = 1 << 24
	MaxLayers = 1 << 14
	MaxDim    = 1 << 16
	MaxHidden = 1 << 20
	MaxCtx    = 1 << 20
)

// DefaultLimits are the limits of the readers that take no Limits
// (LoadTrainer, LoadPipeline).
var DefaultLimits = Limits{MaxParams: DefaultMaxParams, MaxActivationBytes: DefaultMaxActivationBytes}

// WithDefaults fills zero fields and rejects negative ones.
func (l Limits) WithDefaults() (Limits, error) {
	if l.MaxParams < 0 || l.MaxActivationBytes < 0 {
		return l, fmt.Errorf("model limits: negative (max params %d, max activation bytes %d)", l.MaxParams, l.MaxActivationBytes)
	}
	if l.MaxParams == 0 {
		l.MaxParams = DefaultMaxParams
	}
	if l.MaxActivationBytes == 0 {
		l.MaxActivationBytes = DefaultMaxActivationBytes
	}
	return l, nil
}

// NumParams is the parameter count of the whole model c describes (c
// within the field caps; see CheckLimits).
func NumParams(c Config) int64 {
	return EmbedParams(c) + int64(c.Layers)*BlockParams(c) + HeadParams(c)
}

// BlockParams is one transformer block's parameter count: two norm gains,
// q/k/v and output projections, and the MLP.
func BlockParams(c Config) int64 {
	d, h := int64(c.Dim), int64(c.Hidden)
	return 2*d + 3*d*d + d*d + 2*d*h
}

// EmbedParams is the token and position embeddings' parameter count
// (held by the first stage).
func EmbedParams(c Config) int64 { return int64(c.Vocab+c.Ctx) * int64(c.Dim) }

// HeadParams is the final norm's and the output head's parameter count
// (held by the head stage).
func HeadParams(c Config) int64 { return int64(c.Dim) + int64(c.Dim)*int64(c.Vocab) }

// ParamCopies is how many floats the Go model keeps per parameter besides
// the optimizer's state: the weight, its gradient and the buffer one
// microbatch's contribution is computed into before it is added in order.
const ParamCopies = 3

// BlockActivationFloats is what one block keeps per token from its forward
// for its backward, as the Go model holds it: its input on the residual
// stream, both norms' outputs and inverse RMS, q/k/v, the attention output
// and the residual after it, the MLP's pre-activation, tanh and
// activation (8 dim + 3 hidden + 2 floats), and a row of attention
// weights per head.
func BlockActivationFloats(c Config) float64 {
	return 8*float64(c.Dim) + 3*float64(c.Hidden) + 2 + float64(c.Heads)*float64(c.Ctx)
}

// ShardActivationFloats is what a shard of blocks blocks keeps per token
// of a microbatch from its forward for its backward: every block's
// BlockActivationFloats, the token ids on the embedding's shard, and the
// embedding's output on a shard without blocks.
func ShardActivationFloats(c Config, blocks int, embed bool) float64 {
	f := float64(blocks) * BlockActivationFloats(c)
	if embed {
		f++
	}
	if blocks == 0 {
		f += float64(c.Dim)
	}
	return f
}

// ShardWorkspaceFloats is the scratch a shard keeps between microbatches
// for microbatches of tokens tokens in sequences of c.Ctx, with attention
// on workers goroutines: the gradients of a block's backward (6 dim +
// hidden floats per token) and a t×t matrix per worker; with the head, the
// final norm's output, its inverse RMS and gradient and the logits (2 dim
// + 1 + vocab per token).
func ShardWorkspaceFloats(c Config, tokens float64, head bool, workers int) float64 {
	d := float64(c.Dim)
	f := tokens*(6*d+float64(c.Hidden)) + float64(workers)*float64(c.Ctx)*float64(c.Ctx)
	if head {
		f += tokens * (2*d + 1 + float64(c.Vocab))
	}
	return f
}

// BlockWeightGradFloats is the part of BlockActivationFloats a split
// backward keeps per token between the input gradient and the weight
// gradient: the inputs of the block's four matrix products (3 dim + hidden)
// and the gradients at their outputs (5 dim + hidden). The attention
// weights and the rest are freed by the input gradient.
func BlockWeightGradFloats(c Config) float64 {
	return 8*float64(c.Dim) + 2*float64(c.Hidden)
}

// HeadActivationFloats is what the head keeps per token while it computes
// the loss: the logits and their gradient.
func HeadActivationFloats(c Config) float64 { return 2 * float64(c.Vocab) }

// ActivationBytes estimates what the forward pass of batch sequences of
// c.Ctx tokens keeps for the backward pass: ShardActivationFloats of the
// whole model per token plus HeadActivationFloats per token, in float32.
// float64 so no product overflows.
func ActivationBytes(c Config, batch int) float64 {
	tokens := float64(batch) * float64(c.Ctx)
	return 4 * tokens * (ShardActivationFloats(c, c.Layers, true) + HeadActivationFloats(c))
}

// CheckLimits refuses a model (config with defaults applied) larger than
// l allows for microbatches of batch sequences, with an error naming the
// field or total at fault. Validate checks everything else.
func (c Config) CheckLimits(l Limits, batch int) error {
	l, err := l.WithDefaults()
	if err != nil {
		return err
	}
	for _, f := range []struct {
		name string
		v    int
		max  int
	}{{"vocab", c.Vocab, MaxVocab}, {"layers", c.Layers, MaxLayers}, {"dim", c.Dim, MaxDim}, {"hidden", c.Hidden, MaxHidden}, {"ctx", c.Ctx, MaxCtx}} {
		if f.v > f.max {
			return fmt.Errorf("model: %s %d exceeds the limit %d", f.name, f.v, f.max)
		}
	}
	if c.Heads > c.Dim {
		return fmt.Errorf("model: heads %d exceeds dim %d", c.Heads, c.Dim)
	}
	if n := NumParams(c); n > l.MaxParams {
		return fmt.Errorf("model: %d parameters (%.1f GiB of training state) exceed the limit of %d parameters (dim %d, layers %d, hidden %d, vocab %d, ctx %d)",
			n, float64(16*n)/(1<<30), l.MaxParams, c.Dim, c.Layers, c.Hidden, c.Vocab, c.Ctx)
	}
	if batch < 1 {
		batch = 1
	}
	if a := ActivationBytes(c, batch); a > float64(l.MaxActivationBytes) {
		return fmt.Errorf("model: a microbatch of %d sequences of %d tokens keeps about %.0f activation bytes, over the limit of %d",
			batch, c.Ctx, a, l.MaxActivationBytes)
	}
	return nil
}
