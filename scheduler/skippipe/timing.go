package skippipe

import (
	"math"
	"sort"
)

// The planners' own timing estimate. Every microbatch is a chain of tasks,
// F on each hop, L on the origin, then B on each hop in reverse; a node
// runs one task at a time and a hop costs the pair's delay (links queue
// when LinkBusy is set). A list scheduler dispatches tasks in start-time
// order, choosing among those ready at a node by a priority rule; the
// order it produces is the node's program, so a simulator with the same
// cost model replays the estimate exactly.

// spPolicy chooses among the tasks ready on a free node.
type spPolicy uint8

const (
	polCritical spPolicy = 1 + iota // longest remaining chain first
	polFIFO                         // earliest arrival first
	polBackward                     // backward and loss before forward, then arrival
	polFlush                        // GPipe: no backward before the node's last forward
	polLaunch                       // origins launch forwards first; elsewhere backward first
)

var spPolicies = []spPolicy{polCritical, polFIFO, polBackward, polLaunch}

// Task is one task of a node's program: step Step of microbatch
// Microbatch's round trip over its path of k hops, the forward on hop
// Step while Step < k, the loss on the origin at Step == k, and the
// backward on hop 2k-Step after it.
type Task struct{ Microbatch, Step int32 }

// spEval holds reusable buffers for timing one set of paths.
type spEval struct {
	nt       *spNet
	next     []int     // next task per microbatch
	ready    []float64 // arrival time of that task's input
	tail     [][]float64
	free     []float64
	linkFree []float64 // n*n, only with LinkBusy
	fwdLeft  []int     // per node: forward/loss tasks not yet run (flush)
	order    [][]Task
	finish   float64
	meanDone float64 // mean completion time of the microbatches (run only)
}

func newEval(nt *spNet) *spEval {
	n := len(nt.names)
	e := &spEval{nt: nt, free: make([]float64, n), fwdLeft: make([]int, n), order: make([][]Task, n)}
	if nt.busy != nil {
		e.linkFree = make([]float64, n*n)
	}
	return e
}

// taskNode is the node of task j of a path of k hops.
func taskNode(path []int, j int) int {
	k := len(path)
	switch {
	case j < k:
		return path[j]
	case j == k:
		return path[0]
	}
	return path[2*k-j]
}

func (nt *spNet) taskDur(path []int, j int) float64 {
	k := len(path)
	switch {
	case j < k:
		return nt.fwd[path[j]]
	case j == k:
		return nt.lossRatio * nt.fwd[path[0]]
	}
	return nt.bwdRatio * nt.fwd[path[2*k-j]]
}

func (nt *spNet) hopDelay(a, b int) float64 {
	if a == b {
		return 0
	}
	return nt.delay[a][b]
}

// run times the paths under pol, recording every node's task order when
// record is set, and returns the makespan of the compute.
func (e *spEval) run(paths [][]int, pol spPolicy, record bool) float64 {
	nt := e.nt
	m := len(paths)
	if cap(e.next) < m {
		e.next = make([]int, m)
		e.ready = make([]float64, m)
		e.tail = make([][]float64, m)
	}
	e.next, e.ready, e.tail = e.next[:m], e.ready[:m], e.tail[:m]
	for i := range e.free {
		e.free[i] = 0
		e.fwdLeft[i] = 0
		e.order[i] = e.order[i][:0]
	}
	for i := range e.linkFree {
		e.linkFree[i] = 0
	}
	remaining := 0
	for mb, p := range paths {
		nTasks := 2*len(p) + 1
		remaining += nTasks
		if cap(e.tail[mb]) < nTasks {
			e.tail[mb] = make([]float64, nTasks)
		}
		t := e.tail[mb][:nTasks]
		acc := 0.0
		for j := nTasks - 1; j >= 0; j-- {
			acc += nt.taskDur(p, j)
			t[j] = acc
			if j > 0 {
				acc += nt.hopDelay(taskNode(p, j-1), taskNode(p, j))
			}
		}
		e.tail[mb] = t
		e.next[mb] = 0
		e.ready[mb] = 0
		if pol == polFlush {
			for j := 0; j <= len(p); j++ {
				e.fwdLeft[taskNode(p, j)]++
			}
		}
	}
	makespan, sumDone := 0.0, 0.0
	for remaining > 0 {
		// The earliest start over all microbatches' next tasks.
		best, bestT := -1, math.Inf(1)
		for mb, p := range paths {
			j := e.next[mb]
			if j > 2*len(p) {
				continue
			}
			node := taskNode(p, j)
			if pol == polFlush && j > len(p) && e.fwdLeft[node] > 0 {
				continue
			}
			t := max(e.free[node], e.ready[mb])
			if t < bestT {
				best, bestT = mb, t
			}
		}
		node := taskNode(paths[best], e.next[best])
		// Among the tasks ready on that node by then, pick by priority.
		pick := best
		for mb, p := range paths {
			j := e.next[mb]
			if mb == best || j > 2*len(p) || taskNode(p, j) != node || e.ready[mb] > bestT {
				continue
			}
			if pol == polFlush && j > len(p) && e.fwdLeft[node] > 0 {
				continue
			}
			if e.better(pol, paths, mb, pick) {
				pick = mb
			}
		}
		p := paths[pick]
		j := e.next[pick]
		end := bestT + nt.taskDur(p, j)
		if record {
			e.order[node] = append(e.order[node], Task{int32(pick), int32(j)})
		}
		e.free[node] = end
		if pol == polFlush && j <= len(p) {
			e.fwdLeft[node]--
		}
		if end > makespan {
			makespan = end
		}
		remaining--
		e.next[pick] = j + 1
		if j == 2*len(p) {
			sumDone += end
		}
		if j+1 <= 2*len(p) {
			to := taskNode(p, j+1)
			arrive := end
			if to != node {
				arrive = end + nt.delay[node][to]
				if e.linkFree != nil {
					k := node*len(nt.names) + to
					start := max(end, e.linkFree[k])
					e.linkFree[k] = start + nt.busy[node][to]
					arrive = start + nt.delay[node][to]
				}
			}
			e.ready[pick] = arrive
		}
	}
	e.finish = makespan
	e.meanDone = sumDone / float64(max(m, 1))
	return makespan
}

// better reports whether microbatch a's next task goes before b's.
func (e *spEval) better(pol spPolicy, paths [][]int, a, b int) bool {
	ja, jb := e.next[a], e.next[b]
	ka, kb := len(paths[a]), len(paths[b])
	switch pol {
	case polCritical:
		ta, tb := e.tail[a][ja], e.tail[b][jb]
		if ta != tb {
			return ta > tb
		}
	case polBackward:
		ba, bb := ja >= ka, jb >= kb
		if ba != bb {
			return ba
		}
	case polLaunch:
		// Both tasks are on one node; at an origin a forward (j == 0)
		// goes first, elsewhere a backward does.
		fa, fb := ja == 0, jb == 0
		if fa != fb {
			return fa
		}
		ba, bb := ja >= ka, jb >= kb
		if ba != bb {
			return ba
		}
		ta, tb := e.tail[a][ja], e.tail[b][jb]
		if ta != tb {
			return ta > tb
		}
	}
	if e.ready[a] != e.ready[b] {
		return e.ready[a] < e.ready[b]
	}
	return a < b
}

// runFree times the paths as if no two microbatches ever met on a node or
// link (the network-oblivious view of the authors' non-CA scheduler), the
// origin still starting its microbatches one forward apart. It records
// every node's tasks in the order of their contention-free start times,
// which respects each chain's order, so the programs cannot deadlock.
// The score is the latest finish plus a small share of the mean, so
// ties between equally slow plans favour faster microbatches.
func (e *spEval) runFree(paths [][]int, record bool) float64 {
	nt := e.nt
	type stamped struct {
		t    float64
		task Task
	}
	var per [][]stamped
	if record {
		per = make([][]stamped, len(nt.names))
	}
	local := map[int]int{}
	worst, sum := 0.0, 0.0
	for mb, p := range paths {
		t := float64(local[p[0]]) * nt.fwd[p[0]]
		local[p[0]]++
		for j := 0; j <= 2*len(p); j++ {
			if j > 0 {
				t += nt.hopDelay(taskNode(p, j-1), taskNode(p, j))
			}
			if record {
				n := taskNode(p, j)
				per[n] = append(per[n], stamped{t, Task{int32(mb), int32(j)}})
			}
			t += nt.taskDur(p, j)
		}
		worst = max(worst, t)
		sum += t
	}
	if record {
		for n := range per {
			s := per[n]
			sort.SliceStable(s, func(i, j int) bool {
				if s[i].t != s[j].t {
					return s[i].t < s[j].t
				}
				if s[i].task.Microbatch != s[j].task.Microbatch {
					return s[i].task.Microbatch < s[j].task.Microbatch
				}
				return s[i].task.Step < s[j].task.Step
			})
			e.order[n] = e.order[n][:0]
			for _, x := range s {
				e.order[n] = append(e.order[n], x.task)
			}
		}
	}
	e.finish = worst
	return worst + 1e-3*sum/float64(len(paths))
}

// sortStable is an insertion sort: stable, allocation free, and fast on
// the short per-node lists it is used for.
func sortStable(n int, less func(i, j int) bool, swap func(i, j int)) {
	for i := 1; i < n; i++ {
		for j := i; j > 0 && less(j, j-1); j-- {
			swap(j, j-1)
		}
	}
}
