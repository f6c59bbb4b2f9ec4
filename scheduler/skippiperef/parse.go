package skippiperef

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"sort"
	"strconv"

	"stagecoach/scheduler"
)

// File is a schedule file written by the SkipPipe authors'
// scheduler (format: ../shared/reference/README.md), parsed and checked.
type File struct {
	// Partitions lists node ids per stage, stage 0 first.
	Partitions [][]int
	// Delays[a][b] is the seconds of one microbatch hop from a to b.
	Delays [][]float64
	// Memory is the authors' node memory in agents.
	Memory int
	// Locations names each node's region (may be empty).
	Locations []string
	// MicrobatchesPerOrigin is "ours-sends".
	MicrobatchesPerOrigin int
	// BaselineExpectedS is the authors' simulated full-pipeline time (0
	// when absent).
	BaselineExpectedS float64
	// Variants holds the skipping plans present, in the order ca, non-ca,
	// random.
	Variants []Variant
}

// Variant is one of the authors' skipping plans.
type Variant struct {
	// Name is the Stagecoach schedule name: ref-ca, ref-nonca, ref-random.
	Name string
	// Agents in ascending key order.
	Agents []Agent
	// Order[node] is the node's planned processing order, nil for nodes
	// (or whole files) without one.
	Order [][]OrderEntry
	// ExpectedS is the authors' simulated iteration time (0 when absent).
	ExpectedS float64
	// Notes says what was missing or ignored.
	Notes []string
}

// Agent is a group of microbatches sharing a path.
type Agent struct {
	Key  int
	Path []int // node ids, origin first
}

// OrderEntry is one (agent, planned start) pair of a processing order.
type OrderEntry struct {
	Agent  int
	StartS float64
}

// maxNodes bounds the files the importer accepts.
const maxNodes = 4096

var variantKeys = []struct{ name, paths, order, expected string }{
	{"ref-ca", "ca-paths", "ca-processing-order", "ca-expected-time"},
	{"ref-nonca", "non-ca-paths", "non-ca-processing-order", "nonca-expected-time"},
	{"ref-random", "random-paths", "random-processing-order", "random-expected-time"},
}

// Parse parses and checks an authors' schedule file. Errors
// name the field at fault.
func Parse(data []byte) (*File, error) {
	var raw map[string]json.RawMessage
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&raw); err != nil {
		return nil, fmt.Errorf("skippipe file: not a JSON object: %v", err)
	}
	if raw == nil {
		return nil, fmt.Errorf("skippipe file: not a JSON object")
	}
	ref := &File{}
	field := func(name string, dst any, required bool) error {
		v, ok := raw[name]
		if !ok || string(v) == "null" {
			if required {
				return fmt.Errorf("skippipe file: field %q is missing", name)
			}
			return nil
		}
		if err := json.Unmarshal(v, dst); err != nil {
			return fmt.Errorf("skippipe file: field %q: %v", name, err)
		}
		return nil
	}
	if err := field("delays", &ref.Delays, true); err != nil {
		return nil, err
	}
	n := len(ref.Delays)
	if n < 2 || n > maxNodes {
		return nil, fmt.Errorf("skippipe file: field \"delays\" has %d rows, want 2..%d", n, maxNodes)
	}
	for a, row := range ref.Delays {
		if len(row) != n {
			return nil, fmt.Errorf("skippipe file: field \"delays\": row %d has %d entries, want %d", a, len(row), n)
		}
		for b, v := range row {
			if v < 0 || math.IsNaN(v) || math.IsInf(v, 0) {
				return nil, fmt.Errorf("skippipe file: field \"delays\": [%d][%d] is %v, want >= 0", a, b, v)
			}
		}
	}
	if err := field("partitions", &ref.Partitions, true); err != nil {
		return nil, err
	}
	if len(ref.Partitions) < 2 {
		return nil, fmt.Errorf("skippipe file: field \"partitions\" has %d stages, want >= 2", len(ref.Partitions))
	}
	seen := make([]bool, n)
	for s, p := range ref.Partitions {
		if len(p) == 0 {
			return nil, fmt.Errorf("skippipe file: field \"partitions\": stage %d is empty", s)
		}
		for _, v := range p {
			if v < 0 || v >= n {
				return nil, fmt.Errorf("skippipe file: field \"partitions\": stage %d names node %d, want 0..%d", s, v, n-1)
			}
			if seen[v] {
				return nil, fmt.Errorf("skippipe file: field \"partitions\": node %d placed twice", v)
			}
			seen[v] = true
		}
	}
	for v, ok := range seen {
		if !ok {
			return nil, fmt.Errorf("skippipe file: field \"partitions\": node %d (of %d in delays) is in no stage", v, n)
		}
	}
	if err := field("memory", &ref.Memory, true); err != nil {
		return nil, err
	}
	if ref.Memory < 1 || ref.Memory > 1<<20 {
		return nil, fmt.Errorf("skippipe file: field \"memory\" is %d, want >= 1", ref.Memory)
	}
	if err := field("ours-sends", &ref.MicrobatchesPerOrigin, true); err != nil {
		return nil, err
	}
	if ref.MicrobatchesPerOrigin < 1 || ref.MicrobatchesPerOrigin*len(ref.Partitions[0]) > scheduler.MaxMicrobatches {
		return nil, fmt.Errorf("skippipe file: field \"ours-sends\" is %d, want 1..%d", ref.MicrobatchesPerOrigin, scheduler.MaxMicrobatches/len(ref.Partitions[0]))
	}
	if err := field("locations", &ref.Locations, false); err != nil {
		return nil, err
	}
	if ref.Locations != nil && len(ref.Locations) != n {
		return nil, fmt.Errorf("skippipe file: field \"locations\" has %d entries, want %d", len(ref.Locations), n)
	}
	if err := field("baseline-expected-time", &ref.BaselineExpectedS, false); err != nil {
		return nil, err
	}
	stageOf := make([]int, n)
	for s, p := range ref.Partitions {
		for _, v := range p {
			stageOf[v] = s
		}
	}
	for _, k := range variantKeys {
		if _, ok := raw[k.paths]; !ok {
			continue
		}
		var paths map[string]map[string]int
		if err := field(k.paths, &paths, true); err != nil {
			return nil, err
		}
		rv := Variant{Name: k.name}
		if err := field(k.expected, &rv.ExpectedS, false); err != nil {
			return nil, err
		}
		agents, err := parseAgents(k.paths, paths, ref, stageOf)
		if err != nil {
			return nil, err
		}
		rv.Agents = agents
		rv.Order, rv.Notes = parseOrder(k.order, raw[k.order], n)
		ref.Variants = append(ref.Variants, rv)
	}
	if len(ref.Variants) == 0 {
		return nil, fmt.Errorf("skippipe file: no paths (want at least one of \"ca-paths\", \"non-ca-paths\", \"random-paths\")")
	}
	return ref, nil
}

func parseAgents(fieldName string, paths map[string]map[string]int, ref *File, stageOf []int) ([]Agent, error) {
	n := len(ref.Delays)
	if len(paths) == 0 {
		return nil, fmt.Errorf("skippipe file: field %q has no agents", fieldName)
	}
	keys := make([]string, 0, len(paths))
	for k := range paths {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var out []Agent
	for _, k := range keys {
		id, err := strconv.Atoi(k)
		if err != nil || id < 0 {
			return nil, fmt.Errorf("skippipe file: field %q: agent key %q is not a non-negative integer", fieldName, k)
		}
		hops := paths[k]
		next := map[int]int{}
		isTarget := map[int]bool{}
		for from, to := range hops {
			f, err := strconv.Atoi(from)
			if err != nil || f < 0 || f >= n {
				return nil, fmt.Errorf("skippipe file: field %q: agent %s: node key %q is not a node id 0..%d", fieldName, k, from, n-1)
			}
			if to < 0 || to >= n {
				return nil, fmt.Errorf("skippipe file: field %q: agent %s: next node %d is not a node id 0..%d", fieldName, k, to, n-1)
			}
			next[f] = to
			isTarget[to] = true
		}
		origin := -1
		for f := range next {
			if !isTarget[f] && stageOf[f] == 0 && (origin < 0 || f < origin) {
				origin = f
			}
		}
		if origin < 0 {
			return nil, fmt.Errorf("skippipe file: field %q: agent %s has no stage-0 origin (a node no hop leads to)", fieldName, k)
		}
		path := []int{origin}
		for v, ok := next[origin]; ok; v, ok = next[v] {
			if len(path) > len(next) {
				return nil, fmt.Errorf("skippipe file: field %q: agent %s: path loops", fieldName, k)
			}
			path = append(path, v)
		}
		if len(path) != len(next)+1 {
			return nil, fmt.Errorf("skippipe file: field %q: agent %s: %d hops listed but the path from origin %d has %d", fieldName, k, len(next), origin, len(path)-1)
		}
		for i, v := range path[1:] {
			if stageOf[v] == 0 {
				return nil, fmt.Errorf("skippipe file: field %q: agent %s: hop %d goes to stage-0 node %d", fieldName, k, i+1, v)
			}
		}
		out = append(out, Agent{Key: id, Path: path})
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	for i := 1; i < len(out); i++ {
		if out[i].Key == out[i-1].Key {
			return nil, fmt.Errorf("skippipe file: field %q: agent %d listed twice", fieldName, out[i].Key)
		}
	}
	// Every stage-0 node sends the same microbatches, split evenly.
	per := map[int]int{}
	for _, a := range out {
		per[a.Path[0]]++
	}
	for _, o := range ref.Partitions[0] {
		c := per[o]
		if c == 0 || ref.MicrobatchesPerOrigin%c != 0 {
			return nil, fmt.Errorf("skippipe file: field %q: origin %d has %d agents, want a divisor of ours-sends (%d)", fieldName, o, c, ref.MicrobatchesPerOrigin)
		}
		if c != per[ref.Partitions[0][0]] {
			return nil, fmt.Errorf("skippipe file: field %q: origin %d has %d agents, origin %d has %d", fieldName, o, c, ref.Partitions[0][0], per[ref.Partitions[0][0]])
		}
	}
	return out, nil
}

// parseOrder reads a per-node processing order. Anything unusable is
// dropped with a note: the published file stores per-node microbatch
// counts under random-processing-order, and has no ca-processing-order.
func parseOrder(name string, v json.RawMessage, n int) ([][]OrderEntry, []string) {
	if len(v) == 0 || string(v) == "null" {
		return nil, []string{fmt.Sprintf("%s absent: nodes process work in arrival order", name)}
	}
	var m map[string][][]float64
	if err := json.Unmarshal(v, &m); err != nil {
		return nil, []string{fmt.Sprintf("%s is not per-node (agent, start) pairs, ignored: nodes process work in arrival order", name)}
	}
	out := make([][]OrderEntry, n)
	var notes []string
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		node, err := strconv.Atoi(k)
		if err != nil || node < 0 || node >= n {
			notes = append(notes, fmt.Sprintf("%s: key %q is not a node id, ignored", name, k))
			continue
		}
		var es []OrderEntry
		ok := true
		for _, e := range m[k] {
			if len(e) != 2 || e[0] < 0 || e[0] != math.Trunc(e[0]) || e[0] > math.MaxInt32 {
				ok = false
				break
			}
			es = append(es, OrderEntry{Agent: int(e[0]), StartS: e[1]})
		}
		if !ok {
			notes = append(notes, fmt.Sprintf("%s: node %d has a malformed entry, its order is ignored", name, node))
			continue
		}
		out[node] = es
	}
	return out, notes
}
