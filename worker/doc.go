// Package worker owns one pipeline worker: a gRPC server that holds its
// stage's model shard, runs its program from the Plan through the
// scheduler's Machine, streams activations and gradients to its peers and
// steps its optimizer.
package worker
