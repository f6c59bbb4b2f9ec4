package failures

import (
	"fmt"
	"io"
	"math"
	"math/rand"
	"os"
	"sort"
	"time"

	"stagecoach/internal/yamlx"
)

// Event kinds of a failure trace.
const (
	// Crash: the node's worker dies (detected by its peers' streams).
	Crash = "crash"
	// Pause: the node stops for For (SIGSTOP, a GC storm, a partition);
	// detected only when its lease expires, and it comes back by itself.
	Pause = "pause"
	// Rejoin: a crashed node (or its replacement) registers again.
	Rejoin = "rejoin"
	// Degrade: the node's network interface drops to BandwidthGiBs.
	Degrade = "degrade"
)

// Event is one entry of a failure trace.
type Event struct {
	// At is when it happens, from the start of the run.
	At Duration `yaml:"at" json:"at_s"`
	// Node names the cluster node.
	Node string `yaml:"node" json:"node"`
	Kind string `yaml:"kind" json:"kind"`
	// For is a pause's length.
	For Duration `yaml:"for,omitempty" json:"for_s,omitempty"`
	// BandwidthGiBs is a degraded interface's bandwidth.
	BandwidthGiBs float64 `yaml:"bandwidth_gib_s,omitempty" json:"bandwidth_gib_s,omitempty"`
}

// Trace is a failure trace: events in time order.
type Trace struct {
	Events []Event `yaml:"events" json:"events"`
}

// Duration is a time.Duration written as "90m", "1h30m" or "45s" in YAML.
type Duration time.Duration

// UnmarshalYAML reads a Go duration string.
func (d *Duration) UnmarshalYAML(unmarshal func(any) error) error {
	var s string
	if err := unmarshal(&s); err != nil {
		return err
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("duration %q: want a Go duration such as 90s, 15m or 2h", s)
	}
	*d = Duration(v)
	return nil
}

// MarshalJSON writes seconds.
func (d Duration) MarshalJSON() ([]byte, error) {
	return []byte(fmt.Sprint(time.Duration(d).Seconds())), nil
}

// Seconds is the duration in seconds.
func (d Duration) Seconds() float64 { return time.Duration(d).Seconds() }

// MaxTraceBytes and MaxEvents bound a trace file before it is decoded and
// used.
const (
	MaxTraceBytes = 4 << 20
	MaxEvents     = 1 << 16
)

// ParseTrace decodes and checks a trace against the cluster's nodes:
// every event names a known node and kind, times are not negative, pauses
// last, degraded bandwidths are positive. Events are sorted by time
// (stably: simultaneous events keep their order).
func ParseTrace(data []byte, nodes []string) (*Trace, error) {
	if len(data) > MaxTraceBytes {
		return nil, fmt.Errorf("failure trace: %d bytes, more than %d", len(data), MaxTraceBytes)
	}
	var t Trace
	if err := yamlx.Strict(data, &t); err != nil {
		return nil, fmt.Errorf("failure trace: %w", err)
	}
	if err := t.check(nodes); err != nil {
		return nil, err
	}
	return &t, nil
}

// LoadTrace reads and parses a trace file.
func LoadTrace(path string, nodes []string) (*Trace, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxTraceBytes+1))
	if err != nil {
		return nil, err
	}
	t, err := ParseTrace(data, nodes)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return t, nil
}

func (t *Trace) check(nodes []string) error {
	if len(t.Events) > MaxEvents {
		return fmt.Errorf("failure trace: %d events, more than %d", len(t.Events), MaxEvents)
	}
	known := map[string]bool{}
	for _, n := range nodes {
		known[n] = true
	}
	for i, e := range t.Events {
		where := fmt.Sprintf("failure trace: events[%d] (%s %s)", i, e.Kind, e.Node)
		switch {
		case !known[e.Node]:
			return fmt.Errorf("%s: the cluster has no node %q", where, e.Node)
		case e.At < 0:
			return fmt.Errorf("%s: at is negative", where)
		case e.Kind == Pause && e.For <= 0:
			return fmt.Errorf("%s: a pause needs for > 0", where)
		case e.Kind == Degrade && !(e.BandwidthGiBs > 0 && !math.IsInf(e.BandwidthGiBs, 0)):
			return fmt.Errorf("%s: bandwidth_gib_s is %v, want > 0", where, e.BandwidthGiBs)
		case e.Kind != Crash && e.Kind != Pause && e.Kind != Rejoin && e.Kind != Degrade:
			return fmt.Errorf("%s: kind %q, want crash, pause, rejoin or degrade", where, e.Kind)
		}
	}
	sort.SliceStable(t.Events, func(i, j int) bool { return t.Events[i].At < t.Events[j].At })
	return nil
}

// Draw makes a trace over horizon where each node crashes after an
// exponentially distributed time with mean mtbf (a Poisson process per
// node) and rejoins repair later. The same seed gives the same trace.
func Draw(nodes []string, mtbf, repair, horizon time.Duration, seed int64) (*Trace, error) {
	if mtbf <= 0 || repair < 0 || horizon <= 0 {
		return nil, fmt.Errorf("failure trace: mtbf %v, repair %v and horizon %v must be positive", mtbf, repair, horizon)
	}
	if n := float64(len(nodes)) * float64(horizon) / float64(mtbf) * 2; n > MaxEvents {
		return nil, fmt.Errorf("failure trace: about %.0f events over %v with MTBF %v, more than %d", n, horizon, mtbf, MaxEvents)
	}
	r := rand.New(rand.NewSource(seed))
	t := &Trace{}
	for _, n := range nodes {
		at := time.Duration(0)
		for {
			at += time.Duration(r.ExpFloat64() * float64(mtbf))
			if at >= horizon {
				break
			}
			t.Events = append(t.Events, Event{At: Duration(at), Node: n, Kind: Crash})
			at += repair
			if at >= horizon {
				break
			}
			t.Events = append(t.Events, Event{At: Duration(at), Node: n, Kind: Rejoin})
		}
	}
	if err := t.check(nodes); err != nil {
		return nil, err
	}
	return t, nil
}
