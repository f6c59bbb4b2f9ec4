// Package compute is the boundary between the worker, which is the runtime
// (plan interpreter, transport, all-reduce, fencing, checkpoints, etcd),
// and a backend, which computes stages of a model.
//
// A Backend loads shards: contiguous layer ranges of one model, the first
// with the embedding, the head's owner with the final norm, head and loss.
// Each loaded shard is a Stage. The worker drives a Stage through one
// training step as the model's exactness contract requires (model/README.md):
//
//	ZeroGrad
//	Forward(mb, x) for every microbatch visiting the stage, any order
//	Loss(mb, ...) on the head stage and Backward(mb, g) (or BackwardInput
//	  then BackwardWeight), in ascending microbatch order
//	ScaleGrads(1/visits), after any all-reduce (Grads/SetGrads, or
//	  Contribution per microbatch when contributions are kept apart)
//	SumSquares, then Step(step, lr, clip)
//
// Hidden states are float32 [B, T, Width]; the embedding stage's input is
// the token ids as float32 [B, T]. Skipping a stage for a microbatch is not
// calling it: the hidden state passes unchanged (residual identity).
//
// The built-in Go transformer is compute/builtin; compute/remote carries
// the same operations to a backend process over the compute protocol.
package compute

import (
	"context"
	"errors"
)

// Tensor is a float32 tensor: a shape and its row-major data.
type Tensor struct {
	Shape []int
	Data  []float32
}

// ShardSpec names the part of the model a stage computes: blocks [Lo, Hi),
// plus the embedding and/or the final norm, head and loss.
type ShardSpec struct {
	Lo, Hi int
	Embed  bool
	Head   bool
}

// LoadSpec is what a backend needs to build a stage.
type LoadSpec struct {
	// Model is the model configuration as JSON (the "model" object of
	// model.TrainConfig: layers, dim, heads, ctx, vocab, seed, ...). The
	// worker does not interpret it beyond its limits; the backend builds
	// its model from it, initialised from the seed it holds.
	Model []byte
	// Optim is the optimizer configuration as JSON (model.OptimConfig).
	Optim []byte
	Shard ShardSpec
}

// ParamInfo describes one parameter tensor of a stage.
type ParamInfo struct {
	// Name is the tensor's global name (tok_emb, blocks.3.wqkv, head, ...):
	// the same in every split of the model, so checkpoints written by one
	// split load into another.
	Name string
	// Index is the tensor's place in the whole model's canonical order,
	// the order in which per-tensor sums of squares are added up for the
	// global gradient norm.
	Index int
	Shape []int
	// Decay says whether weight decay applies.
	Decay bool
}

// Elems is the number of elements of the tensor.
func (p ParamInfo) Elems() int {
	n := 1
	for _, d := range p.Shape {
		n *= d
	}
	return n
}

// Capabilities are what a backend can do beyond the required operations.
type Capabilities struct {
	// SplitBackward: BackwardInput and BackwardWeight compute the input
	// gradient and the weight gradient separately (zero-bubble schedules).
	// Without it, BackwardInput runs the whole backward and BackwardWeight
	// does nothing: the same numbers, without the timing benefit.
	SplitBackward bool
}

// Description is what a stage tells the worker about itself.
type Description struct {
	// Backend names the backend (e.g. "go", "torch"), for errors and logs.
	Backend string
	// Params lists the stage's parameters in its gradient order: Grads,
	// SetGrads, Contribution and SumSquares use this order.
	Params []ParamInfo
	// Width is the last dimension of the hidden state the stage takes and
	// produces ([B, T, Width]).
	Width int
	Caps  Capabilities
}

// GradElems is the length of the stage's flat gradient.
func (d Description) GradElems() int {
	n := 0
	for _, p := range d.Params {
		n += p.Elems()
	}
	return n
}

// ParamState is one parameter with its optimizer moments (Adam's m and v;
// empty when the optimizer keeps none).
type ParamState struct {
	ParamInfo
	W, M, V []float32
}

// Recycler is a Stage that takes back a tensor it returned (from Forward,
// Loss or Backward) once its caller is done with it, so that later
// outputs reuse the memory. The caller must not touch the tensor after
// handing it back. Like the Stage's other methods, Recycle is called by
// one goroutine at a time.
type Recycler interface {
	Recycle(t *Tensor)
}

// Stage is one loaded shard. A Stage is used by one goroutine at a time,
// except Describe, which may be called concurrently.
type Stage interface {
	Describe() Description

	// ZeroGrad starts a training step: gradients to zero, and activations
	// saved by an earlier (possibly aborted) step dropped.
	ZeroGrad() error
	// Forward computes the stage on microbatch mb, keeping what its
	// backward needs until Backward (or BackwardWeight) of mb.
	Forward(mb int, x *Tensor) (*Tensor, error)
	// Loss computes the head's loss on hidden (the mean over its B·T
	// tokens), adds its parameter gradient, and returns the gradient of
	// the hidden state. Only on a stage with the head.
	Loss(mb int, hidden *Tensor, targets []int32) (float64, *Tensor, error)
	// Backward takes the gradient of the stage's output for mb, adds the
	// parameter gradient, and returns the gradient of its input (nil on
	// the embedding stage).
	Backward(mb int, grad *Tensor) (*Tensor, error)
	// BackwardInput and BackwardWeight split Backward (Caps.SplitBackward).
	BackwardInput(mb int, grad *Tensor) (*Tensor, error)
	BackwardWeight(mb int) error

	// KeepContributions, when on, keeps each microbatch's parameter
	// gradient apart instead of adding it to the gradient, for an
	// all-reduce that sums replicas' contributions in microbatch order.
	KeepContributions(on bool) error
	// Contribution returns microbatch mb's kept contribution (flat, in
	// Params order); it is valid until the next ZeroGrad.
	Contribution(mb int) ([]float32, error)
	// Grads returns the flat gradient in Params order, in a slice the
	// caller owns (the all-reduce sums into it); SetGrads replaces the
	// gradient with g, which the stage does not keep.
	Grads() ([]float32, error)
	SetGrads(g []float32) error
	// ScaleGrads multiplies every gradient element by f (as float32).
	ScaleGrads(f float32) error
	// SumSquares returns, per parameter in Params order, the sum of the
	// squares of its gradient elements, accumulated in float64 in element
	// order.
	SumSquares() ([]float64, error)
	// Step scales the gradient by clip (when not 1) and applies optimizer
	// step `step` (1-based) at learning rate lr.
	Step(step int, lr float64, clip float32) error

	// State returns the parameters and optimizer moments, in Params
	// order. The slices may be the stage's own: they are valid until the
	// next call that changes the stage.
	State() ([]ParamState, error)
	// SetState replaces parameters and moments (names and shapes must
	// match Params).
	SetState(s []ParamState) error

	// Close releases the stage.
	Close() error
}

// Backend builds stages.
type Backend interface {
	// Name names the backend for errors and logs.
	Name() string
	Load(ctx context.Context, spec LoadSpec) (Stage, error)
	// Close releases the backend (and stops its process, if it has one).
	Close() error
}

// ErrBackend marks a failure of the backend itself (it died, hung or
// answered something impossible), as opposed to bad input: the worker
// fails the iteration like a lost peer.
var ErrBackend = errors.New("compute backend failed")
