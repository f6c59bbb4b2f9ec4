package sim

import (
	"bufio"
	"fmt"
	"io"
	"strconv"
	"strings"
	"unicode/utf8"

	"stagecoach/scheduler"
)

// Chrome trace-event thread ids inside each worker's process.
const (
	traceTidCompute = 1
	traceTidComm    = 2
)

// WriteChromeTrace writes the timelines of results as Chrome trace-event
// JSON (the {"traceEvents": [...]} object form), which Perfetto and
// chrome://tracing open. Each worker is a process with a compute and a
// communication thread; every action is a complete event named as
// PyTorch's pipelining profiler names it ("PP:1F3": stage 1, forward,
// microbatch 3), so simulated and measured traces line up; every message
// between workers is a flow arrow from its send (or, over a free link,
// from the action that produced it) to the action that consumes it.
//
// Several results (a comparison) get one pid range each, pid
// 1000*(i+1)+worker, with the schedule name in the process names. Times
// are microseconds of virtual time. The output is a pure function of the
// results. Every result needs its Timeline: run with Options{Detail: true}.
func WriteChromeTrace(w io.Writer, results ...*Result) error {
	if len(results) == 0 {
		return fmt.Errorf("chrome trace: no results to write")
	}
	stride := 1000
	for i, r := range results {
		if r == nil || r.Plan == nil {
			return fmt.Errorf("chrome trace: result %d has no plan", i)
		}
		if len(r.Timeline) == 0 && r.Plan.TotalActions() > 0 {
			return fmt.Errorf("chrome trace: result %d (%s) has no timeline; simulate with Options{Detail: true}", i, r.Schedule)
		}
		for stride <= len(r.Plan.Workers) {
			stride *= 10
		}
	}
	tw := &traceWriter{w: bufio.NewWriter(w)}
	tw.raw("{\"displayTimeUnit\":\"ms\",\"traceEvents\":[")
	for i, r := range results {
		prefix := ""
		if len(results) > 1 {
			prefix = r.Schedule + ": "
		}
		tw.result(r, stride*(i+1), prefix)
	}
	tw.raw("\n]}\n")
	return tw.w.Flush()
}

type traceWriter struct {
	w      *bufio.Writer
	events int
	flows  int
}

func (tw *traceWriter) raw(s string) { tw.w.WriteString(s) }

// event starts a new event object; the caller writes its fields and "}".
func (tw *traceWriter) event() {
	if tw.events > 0 {
		tw.raw(",")
	}
	tw.raw("\n{")
	tw.events++
}

func (tw *traceWriter) result(r *Result, base int, prefix string) {
	p := r.Plan
	for wk, info := range p.Workers {
		pid := base + wk
		name := fmt.Sprintf("%sworker %d (node %s, stages %v)", prefix, wk, info.Node, info.Stages)
		tw.meta(pid, 0, "process_name", "name", jsonString(name))
		tw.meta(pid, 0, "process_sort_index", "sort_index", strconv.Itoa(pid))
		tw.meta(pid, traceTidCompute, "thread_name", "name", jsonString("compute"))
		tw.meta(pid, traceTidCompute, "thread_sort_index", "sort_index", "1")
		tw.meta(pid, traceTidComm, "thread_name", "name", jsonString("communication"))
		tw.meta(pid, traceTidComm, "thread_sort_index", "sort_index", "2")
	}

	// The consumer of a message is the receiver's compute slice, in the
	// same iteration, whose input is the message's tag.
	ix := scheduler.NewIndex(p)
	type consumerKey struct {
		worker, iter int
		tag          scheduler.Tag
	}
	consumer := map[consumerKey]int{}
	sent := make([]bool, len(r.Timeline)) // compute slices whose output has a send slice
	for i, s := range r.Timeline {
		switch s.Track {
		case TrackCompute:
			for _, t := range ix.Inputs(s.Worker, s.Action) {
				consumer[consumerKey{s.Worker, s.Iteration, t}] = i
			}
		case TrackComm:
			if s.Pred >= 0 && s.Pred < len(sent) {
				sent[s.Pred] = true
			}
		}
	}
	flow := func(from Slice, fromTid int, at float64, to int, tag scheduler.Tag, iter int) {
		c, ok := consumer[consumerKey{to, iter, tag}]
		if !ok {
			return
		}
		dst := r.Timeline[c]
		tw.flows++
		id := strconv.Itoa(tw.flows)
		name := jsonString(tag.Kind.String())
		tw.event()
		tw.raw(`"name":` + name + `,"cat":"message","ph":"s","id":` + id)
		tw.raw(`,"pid":` + strconv.Itoa(base+from.Worker) + `,"tid":` + strconv.Itoa(fromTid) + `,"ts":` + micros(at) + "}")
		tw.event()
		tw.raw(`"name":` + name + `,"cat":"message","ph":"f","bp":"e","id":` + id)
		tw.raw(`,"pid":` + strconv.Itoa(base+dst.Worker) + `,"tid":` + strconv.Itoa(traceTidCompute) + `,"ts":` + micros(dst.Start) + "}")
	}

	for i, s := range r.Timeline {
		pid := strconv.Itoa(base + s.Worker)
		switch s.Track {
		case TrackCompute:
			a := s.Action
			tw.event()
			tw.raw(`"name":` + jsonString("PP:"+pytorchAction(a)) + `,"cat":"compute","ph":"X","pid":` + pid + `,"tid":1`)
			tw.raw(`,"ts":` + micros(s.Start) + `,"dur":` + micros(s.End-s.Start))
			tw.raw(`,"args":{"action":` + jsonString(a.String()) + `,"microbatch":` + strconv.Itoa(a.Microbatch) + `,"stage":` + strconv.Itoa(a.Stage) + `,"iteration":` + strconv.Itoa(s.Iteration) + "}}")
			if !sent[i] {
				// A message over a free link has no send slice: draw its
				// arrow from the producing action.
				for _, msg := range ix.Outputs(s.Worker, a) {
					if msg.To != s.Worker {
						flow(s, traceTidCompute, s.Start, msg.To, msg.Tag(), s.Iteration)
					}
				}
			}
		case TrackComm:
			mb := s.Action.Microbatch
			tw.event()
			tw.raw(`"name":` + jsonString(fmt.Sprintf("send %s mb%d -> worker %d", s.Tensor, mb, s.To)) + `,"cat":"send","ph":"X","pid":` + pid + `,"tid":2`)
			tw.raw(`,"ts":` + micros(s.Start) + `,"dur":` + micros(s.End-s.Start))
			tw.raw(`,"args":{"tensor":` + jsonString(s.Tensor.String()) + `,"microbatch":` + strconv.Itoa(mb) + `,"stage":` + strconv.Itoa(s.Action.Stage) + `,"to":` + strconv.Itoa(s.To) + `,"bytes":` + number(s.Bytes) + `,"iteration":` + strconv.Itoa(s.Iteration) + "}}")
			flow(s, traceTidComm, s.Start, s.To, scheduler.Tag{Kind: s.Tensor, Microbatch: mb, Stage: s.Action.Stage}, s.Iteration)
		}
	}
}

func (tw *traceWriter) meta(pid, tid int, name, key, value string) {
	tw.event()
	tw.raw(`"name":"` + name + `","ph":"M","pid":` + strconv.Itoa(pid) + `,"tid":` + strconv.Itoa(tid) + `,"args":{"` + key + `":` + value + "}}")
}

// pytorchAction spells an action as torch.distributed.pipelining's
// _Action does (stage, computation type, microbatch: "1F3", "0B2"), which
// its profiler ranges wrap as "PP:1F3". Loss, all-reduce and optimizer
// step have no PyTorch counterpart and keep our codes ("3L0", "1R", "S").
//
// An overlapped pair is PyTorch's "(4F3;3I1)OVERLAP_F_B".
func pytorchAction(a scheduler.Action) string {
	if f, bk, ok := a.Halves(); ok {
		return "(" + pytorchAction(f) + ";" + pytorchAction(bk) + ")OVERLAP_F_B"
	}
	var b strings.Builder
	if a.Stage >= 0 {
		b.WriteString(strconv.Itoa(a.Stage))
	}
	b.WriteString(a.Kind.Code())
	if a.Microbatch >= 0 {
		b.WriteString(strconv.Itoa(a.Microbatch))
	}
	return b.String()
}

// micros formats seconds as microseconds with nanosecond precision and no
// trailing zeros, so equal times always print equally.
func micros(s float64) string { return number(s * 1e6) }

func number(v float64) string {
	out := strconv.FormatFloat(v, 'f', 3, 64)
	if strings.IndexByte(out, '.') >= 0 {
		out = strings.TrimRight(out, "0")
		out = strings.TrimSuffix(out, ".")
	}
	if out == "-0" {
		out = "0"
	}
	return out
}

// jsonString quotes s as a JSON string without the HTML escaping of
// encoding/json, so "->" stays readable.
func jsonString(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == '"' || r == '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\t':
			b.WriteString(`\t`)
		case r == utf8.RuneError && size == 1:
			b.WriteString(`\ufffd`) // invalid UTF-8, replaced as encoding/json does
		case r < 0x20 || r == '\u2028' || r == '\u2029':
			fmt.Fprintf(&b, `\u%04x`, r)
		default:
			b.WriteRune(r)
		}
		i += size
	}
	b.WriteByte('"')
	return b.String()
}
