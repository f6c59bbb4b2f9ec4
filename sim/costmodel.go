package sim

import (
	"stagecoach/costmodel"
	"stagecoach/timeline"
)

// The cluster description and its prices live in package costmodel, which
// the runtime shares; these names keep the simulator's API whole.
type (
	Cluster         = costmodel.Cluster
	Compute         = costmodel.Compute
	Node            = costmodel.Node
	Link            = costmodel.Link
	RegionLink      = costmodel.RegionLink
	Workload        = costmodel.Workload
	ModelMemory     = costmodel.ModelMemory
	AllReduceChoice = costmodel.AllReduceChoice

	// Track and Slice are the timeline's, which the runtime records too.
	Track = timeline.Track
	Slice = timeline.Slice
)

// Tracks.
const (
	TrackCompute = timeline.TrackCompute
	TrackComm    = timeline.TrackComm
)

// Cost-model functions under their simulator names.
var (
	ParseCluster       = costmodel.ParseCluster
	LoadCluster        = costmodel.LoadCluster
	EncodeCluster      = costmodel.EncodeCluster
	PresetNames        = costmodel.PresetNames
	Preset             = costmodel.Preset
	Homogeneous        = costmodel.Homogeneous
	SkipPipeGeo        = costmodel.SkipPipeGeo
	DefaultModelMemory = costmodel.DefaultModelMemory
	OptimizerStates    = costmodel.OptimizerStates
	StageMemories      = costmodel.StageMemories
	RuntimeBytes       = costmodel.RuntimeBytes
	ChooseAllReduce    = costmodel.ChooseAllReduce
	AllReduceTime      = costmodel.AllReduceTime
)
