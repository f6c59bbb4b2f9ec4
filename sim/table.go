package sim

import (
	"bytes"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
)

// WriteTable writes an aligned comparison of results, one schedule per
// row, with the figures of the JSON output in the same units. The
// plan_time_s column appears when some result carries a plan time.
func WriteTable(w io.Writer, results []*Result) error {
	planTime := false
	nameWidth := len("schedule")
	for i, r := range results {
		if r == nil {
			return fmt.Errorf("table: result %d is nil", i)
		}
		planTime = planTime || r.PlanTimeS > 0
		nameWidth = max(nameWidth, len(r.Schedule))
	}
	// Numbers read best right-aligned; the schedule name is padded here so
	// it stays left-aligned under tabwriter.AlignRight.
	pad := func(s string) string { return s + strings.Repeat(" ", nameWidth-len(s)) }
	var buf bytes.Buffer
	tw := tabwriter.NewWriter(&buf, 0, 0, colGap, ' ', tabwriter.AlignRight)
	head := []string{pad("schedule"), "workers", "stages", "layers", "microbatches", "iteration_time_s", "bubble_fraction",
		"bubble_over_ideal", "span_s", "utilization", "peak_activations", "peak_memory", "bytes_sent"}
	if planTime {
		head = append(head, "plan_time_s")
	}
	row := func(cells []string) { fmt.Fprint(tw, strings.Join(cells, "\t")+"\t\n") }
	row(head)
	var notes []string
	for _, r := range results {
		cells := []string{pad(r.Schedule), strconv.Itoa(r.Workers), strconv.Itoa(r.Stages), strconv.Itoa(r.Layers), strconv.Itoa(r.Microbatches),
			fixed(r.IterationTimeS, 4), fixed(r.BubbleFraction, 4), fixed(r.BubbleOverIdeal, 4), fixed(r.SpanS, 4),
			fixed(r.Utilization, 4), strconv.Itoa(r.PeakActivations), HumanBytes(r.PeakBytes), HumanBytes(r.BytesSent)}
		if r.Infeasible != "" {
			for i := 5; i < len(cells); i++ {
				// A simulated row over a node's memory keeps the
				// peak it would need.
				if i != peakMemoryCol || r.PeakBytes == 0 {
					cells[i] = "-"
				}
			}
			notes = append(notes, r.Schedule+": infeasible: "+r.Infeasible+"\n")
		}
		if planTime {
			cells = append(cells, strconv.FormatFloat(r.PlanTimeS, 'g', 3, 64))
		}
		row(cells)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	// AlignRight pads every column on the left, the first one included:
	// drop that margin, which is the same on every line.
	for _, line := range strings.SplitAfter(buf.String(), "\n") {
		if _, err := io.WriteString(w, strings.TrimPrefix(line, strings.Repeat(" ", colGap))); err != nil {
			return err
		}
	}
	for _, n := range notes {
		if _, err := io.WriteString(w, n); err != nil {
			return err
		}
	}
	return nil
}

const colGap = 2

// peakMemoryCol is the index of the peak_memory column.
const peakMemoryCol = 11

func fixed(v float64, prec int) string { return strconv.FormatFloat(v, 'f', prec, 64) }

// HumanBytes renders a byte count in binary units ("0 B", "1.5 MiB").
func HumanBytes(b float64) string {
	units := []string{"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"}
	i := 0
	for ; i+1 < len(units) && (b >= 1024 || b <= -1024); i++ {
		b /= 1024
	}
	if i == 0 {
		return strconv.FormatFloat(b, 'f', 0, 64) + " B"
	}
	return strconv.FormatFloat(b, 'f', 1, 64) + " " + units[i]
}
