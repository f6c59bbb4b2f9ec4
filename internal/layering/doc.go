// Package layering holds the test that keeps the runtime (worker,
// coordinator, internal/...) from linking the simulator or a plotting
// library: a worker binary carries the cost model it prices links with,
// not the tools that draw and replay runs.
package layering
