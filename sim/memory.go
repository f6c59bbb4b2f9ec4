package sim

// MemorySeries is one worker's bytes over simulated time: Bytes[i] from
// T[i] until T[i+1].
type MemorySeries struct {
	Worker int
	Node   string
	T      []float64
	Bytes  []float64
	// Capacity is the node's memory in bytes (0: unbounded).
	Capacity float64
}
