package scheduler

import (
	"fmt"
	"sort"
	"strings"
)

// Spec is the input of the classic schedule generators: the pipeline shape
// and how many microbatches one iteration carries.
type Spec struct {
	// Stages is the pipeline depth p: the number of pipeline ranks.
	Stages int
	// Microbatches is m, the microbatches of one iteration (all replicas).
	Microbatches int
	// Replicas is the data-parallel width: each rank has this many workers,
	// and each replica takes a contiguous block of the microbatches.
	// 0 means 1.
	Replicas int
	// Chunks is v, the model chunks per worker for interleaved schedules.
	// 0 means the schedule's default (2 for interleaved, 1 otherwise).
	Chunks int
	// Layers is the total model layers, spread as evenly as possible over
	// the p*v stages. 0 means one layer per stage.
	Layers int
	// Samples is the sequences per microbatch. 0 means 1.
	Samples int
	// Memory is each worker's activation capacity (0: unbounded).
	Memory int
	// Recompute enables activation recomputation in the backward pass.
	Recompute bool
	// Nodes optionally names the node of each worker, by worker id
	// (rank*Replicas + replica).
	Nodes []string
	// Iteration and Epoch are copied into the plan.
	Iteration, Epoch int64
}

// Generator builds a Plan from a Spec. It is a pure function.
type Generator func(Spec) (*Plan, error)

var registry = map[string]Generator{}

// Register makes a generator available by name. It panics on a duplicate
// name: registration happens in init functions of this package.
func Register(name string, g Generator) {
	if _, dup := registry[name]; dup {
		panic("scheduler: duplicate schedule " + name)
	}
	registry[name] = g
}

// Lookup returns the generator registered under name.
func Lookup(name string) (Generator, error) {
	g, ok := registry[name]
	if !ok {
		return nil, fmt.Errorf("unknown schedule %q (known: %s)", name, strings.Join(Names(), ", "))
	}
	return g, nil
}

// Names lists the registered schedules in sorted order.
func Names() []string {
	out := make([]string, 0, len(registry))
	for n := range registry {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// Generate builds the named schedule.
func Generate(name string, s Spec) (*Plan, error) {
	g, err := Lookup(name)
	if err != nil {
		return nil, err
	}
	return g(s)
}

// EstimateActions bounds from above the actions a schedule generates
// for s, before generating it: at most three per microbatch and virtual
// stage (forward, and backward split in two), a loss per microbatch, an
// all-reduce and an optimizer step per worker and virtual stage. Zero
// Replicas count as one, zero Chunks as MaxDefaultChunks.
func (s Spec) EstimateActions() int64 {
	v, r := int64(s.Chunks), int64(max(s.Replicas, 1))
	if v < 1 {
		v = MaxDefaultChunks
	}
	ns, m := int64(max(s.Stages, 0))*v, int64(max(s.Microbatches, 0))
	return 3*ns*m + m + 2*ns*r
}

// MaxDefaultChunks is the most model chunks per worker a schedule takes
// when Spec.Chunks is zero (interleaved's 2).
const MaxDefaultChunks = 2

func (s *Spec) normalise(defaultChunks int) error {
	if s.Stages < 1 {
		return fmt.Errorf("stages is %d, want >= 1", s.Stages)
	}
	if s.Microbatches < 1 {
		return fmt.Errorf("microbatches is %d, want >= 1", s.Microbatches)
	}
	if s.Replicas < 0 || s.Chunks < 0 || s.Layers < 0 || s.Samples < 0 || s.Memory < 0 {
		return fmt.Errorf("replicas, chunks, layers, samples and memory must not be negative")
	}
	if s.Replicas == 0 {
		s.Replicas = 1
	}
	if s.Chunks == 0 {
		s.Chunks = defaultChunks
	}
	if s.Samples == 0 {
		s.Samples = 1
	}
	ns := s.Stages * s.Chunks
	if s.Layers == 0 {
		s.Layers = ns
	}
	if s.Layers < ns {
		return fmt.Errorf("layers is %d, fewer than the %d stages", s.Layers, ns)
	}
	if s.Stages > MaxStages || ns > MaxStages || s.Stages*s.Replicas > MaxWorkers || s.Microbatches > MaxMicrobatches {
		return fmt.Errorf("pipeline too large (stages %d, chunks %d, replicas %d, microbatches %d)", s.Stages, s.Chunks, s.Replicas, s.Microbatches)
	}
	if n := s.EstimateActions(); n > MaxActions {
		return fmt.Errorf("pipeline too large: about %d actions (stages %d x chunks %d x microbatches %d), max %d", n, s.Stages, s.Chunks, s.Microbatches, MaxActions)
	}
	if s.Nodes != nil && len(s.Nodes) != s.Stages*s.Replicas {
		return fmt.Errorf("nodes names %d workers, want %d", len(s.Nodes), s.Stages*s.Replicas)
	}
	return nil
}
