// Package timeline is what a run of a plan looks like over time, measured
// by the workers or simulated: the slices of compute and communication a
// Chrome trace shows. The runtime records timelines but does not link the
// simulator: it takes a Simulator from its caller (package sim provides
// one) to simulate plans and to draw traces.
package timeline

import (
	"io"

	"stagecoach/costmodel"
	"stagecoach/scheduler"
)

// Track separates a worker's compute from its communication in timelines.
type Track uint8

// Tracks.
const (
	TrackCompute Track = iota + 1
	TrackComm
)

// Slice is one stretch of a worker's time: an action it computed, or a
// tensor it sent (Track == TrackComm, from Start on its link to arrival).
type Slice struct {
	Worker    int
	Track     Track
	Action    scheduler.Action // for sends: the microbatch and receiving stage
	Tensor    scheduler.TensorKind
	Iteration int
	Start     float64
	End       float64
	// Pred is the slice whose end let this one start (critical-path
	// predecessor), -1 if none.
	Pred  int
	To    int // receiving worker of a send, -1 for compute
	Bytes float64
}

// Run is one run of a plan, measured or simulated, in seconds.
type Run struct {
	Schedule       string
	Plan           *scheduler.Plan
	Workers        int
	Stages         int
	Microbatches   int
	Iterations     int
	IterationTimeS float64
	MakespanS      float64
	BubbleFraction float64
	Timeline       []Slice
}

// Simulator runs plans against cost models and writes runs as one Chrome
// trace (Perfetto). sim.Simulator implements it.
type Simulator interface {
	// Simulate runs one iteration of p against c; with detail, the run
	// carries its timeline.
	Simulate(p *scheduler.Plan, c *costmodel.Cluster, detail bool) (*Run, error)
	// WriteTrace writes runs side by side as one Chrome trace.
	WriteTrace(w io.Writer, runs ...*Run) error
}
