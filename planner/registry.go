package planner

import (
	"fmt"
	"sort"
	"strings"

	"stagecoach/scheduler"
	"stagecoach/scheduler/skippipe"
)

// Kind is how a family builds its plans.
type Kind int

const (
	// KindClassic families are scheduler generators (scheduler.Generate):
	// equal pipeline replicas placed by node name.
	KindClassic Kind = iota
	// KindSkipPipe families are variants of the SkipPipe planner
	// (skippipe.PlanVariant): they price the nodes and links and
	// place the nodes on stages themselves.
	KindSkipPipe
)

// Caps says what a family supports; callers branch on these, never on a
// schedule's name.
type Caps struct {
	// Repath: a failed iteration can be retried on the survivors with the
	// same placement minus the lost workers.
	Repath bool
	// Vacancy: a stage may be left without a worker (every path skips it).
	Vacancy bool
	// UnequalStages: stages may hold different numbers of workers.
	UnequalStages bool
	// KeepsPlacement: the family places nodes on stages itself and keeps
	// that placement across re-plans, so a restore or a rejoin gives it
	// the members per stage (Snapshot.Parts); other families place the
	// members by name.
	KeepsPlacement bool
	// NeedsCluster: the family plans from per-node costs (a cluster). The
	// runtime falls back to a uniform network without one; `stagecoach
	// plan`, which takes no cluster, refuses it.
	NeedsCluster bool
}

// Family is one entry of the registry: a schedule name, how it is built
// and what it supports.
type Family struct {
	Name string
	Kind Kind
	Caps
	// variant is the SkipPipe planner's schedule (SkipPipe kind only).
	variant string
}

// SkipPipe family names. SkipPipeFull is GPipe over SkipPipe's placement
// and microbatches: the like-for-like baseline of "skippipe" on a cluster
// whose stages may have different node counts.
const (
	SkipPipe           = skippipe.CA
	SkipPipeNonCA      = skippipe.NonCA
	SkipPipeRandom     = skippipe.Random
	SkipPipeFull       = skippipe.Full
	SkipPipeFullGreedy = skippipe.FullGreedy
)

// skipFamilies are the SkipPipe variants. The full pipelines never skip,
// so a stage without a worker cannot be planned around.
var skipFamilies = map[string]Family{}

// renamed maps retired spellings to today's names.
var renamed = map[string]string{"gpipe-greedy": SkipPipeFullGreedy}

func init() {
	for _, name := range []string{SkipPipe, SkipPipeNonCA, SkipPipeRandom, SkipPipeFull, SkipPipeFullGreedy} {
		full := name == SkipPipeFull || name == SkipPipeFullGreedy
		skipFamilies[name] = Family{Name: name, Kind: KindSkipPipe, variant: name,
			Caps: Caps{Repath: true, Vacancy: !full, UnequalStages: true, KeepsPlacement: true, NeedsCluster: true}}
	}
}

// Lookup returns the family of schedule name: a SkipPipe variant or a
// registered scheduler generator.
func Lookup(name string) (Family, error) {
	if f, ok := skipFamilies[name]; ok {
		return f, nil
	}
	if to, ok := renamed[name]; ok {
		return Family{}, fmt.Errorf("schedule %q is now called %q", name, to)
	}
	if _, err := scheduler.Lookup(name); err != nil {
		return Family{}, fmt.Errorf("unknown schedule %q (known: %s)", name, strings.Join(Names(), ", "))
	}
	return Family{Name: name, Kind: KindClassic}, nil
}

// Names lists every schedule the planner builds, sorted.
func Names() []string {
	out := append(scheduler.Names(), SkipPipeNames()...)
	sort.Strings(out)
	return out
}

// SkipPipeNames lists the SkipPipe families, sorted.
func SkipPipeNames() []string {
	out := make([]string, 0, len(skipFamilies))
	for n := range skipFamilies {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// ClassicGPipe is the classic GPipe schedule, which on a SkipPipe cluster
// used to stand for SkipPipeFull.
const ClassicGPipe = "gpipe"

// InSkipPipeList resolves a schedule named beside SkipPipe schedules:
// there "gpipe" was the spelling of SkipPipeFull (GPipe over the same
// placement), and it still is, with a note to give the caller's user.
// Every other name is returned as is.
func InSkipPipeList(name string) (string, string) {
	if name == ClassicGPipe {
		return SkipPipeFull, fmt.Sprintf("%q beside SkipPipe schedules means %q (GPipe over SkipPipe's placement); write %q", name, SkipPipeFull, SkipPipeFull)
	}
	return name, ""
}
