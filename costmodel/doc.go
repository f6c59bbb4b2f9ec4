// Package costmodel is Stagecoach's one price list: the cluster
// description (nodes, their speed and memory, the links between regions
// or a delays matrix, egress limits), what a stage's compute costs on a
// node, what a hop costs (Hop, Price, Schedule), what the all-reduces
// cost, what activations and gradients weigh, and each node's memory cap.
// The simulator (sim), the SkipPipe planning input, the coordinator and
// the link emulation of the runtime (internal/transport) all price with
// it, so they cannot disagree. It decodes cluster YAML and does no other
// I/O, and it never plots: the runtime links it.
package costmodel
