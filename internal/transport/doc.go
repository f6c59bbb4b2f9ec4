// Package transport moves tensors between Stagecoach workers over the Peer
// gRPC service: one client stream per tensor, the header in the first
// chunk, payload chunks of at most Options.ChunkBytes, a maximum tensor
// size enforced on receive, and flow-control windows and buffers sized for
// bulk transfer (DESIGN 7a). An Outbox gives every destination its own
// bounded send queue, so a slow link pushes back on its sender only, and
// can emulate a slow link (latency plus bytes over bandwidth, serialised
// per directed link) for tests and laptop demos of geo-distributed runs.
//
// The package knows nothing about plans or models: payloads are bytes and
// headers are pb.TensorHeader.
package transport
