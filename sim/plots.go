package sim

import (
	"fmt"
	"math"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
)

// Series is one named line of a line plot: Y[i] at X[i].
type Series struct {
	Name string
	X, Y []float64
}

// Bars is one named group member of a bar chart: Values[i] belongs to the
// i-th label.
type Bars struct {
	Name   string
	Values []float64
}

// WriteLinePlot draws series as lines with markers and a legend to path
// (PNG, SVG or PDF by extension); sweeps use it for bubble fraction
// against microbatches per schedule, or iteration time against skip ratio
// per variant. Series keep their order, colour and dash by position.
func WriteLinePlot(path, title, xlabel, ylabel string, series []Series) error {
	if err := checkImagePath(path); err != nil {
		return fmt.Errorf("line plot: %w", err)
	}
	if len(series) == 0 {
		return fmt.Errorf("line plot %s: no series", path)
	}
	p := plot.New()
	p.Title.Text, p.X.Label.Text, p.Y.Label.Text = title, xlabel, ylabel
	p.Add(plotter.NewGrid())
	p.Legend.Top = true
	for i, s := range series {
		if len(s.X) != len(s.Y) {
			return fmt.Errorf("line plot %s: series %q has %d x values and %d y values", path, s.Name, len(s.X), len(s.Y))
		}
		if len(s.X) == 0 {
			return fmt.Errorf("line plot %s: series %q is empty", path, s.Name)
		}
		xys := make(plotter.XYs, len(s.X))
		for j := range s.X {
			if !finite(s.X[j]) || !finite(s.Y[j]) {
				return fmt.Errorf("line plot %s: series %q point %d is (%v, %v), want finite numbers", path, s.Name, j, s.X[j], s.Y[j])
			}
			xys[j].X, xys[j].Y = s.X[j], s.Y[j]
		}
		line, points, err := plotter.NewLinePoints(xys)
		if err != nil {
			return fmt.Errorf("line plot %s: series %q: %w", path, s.Name, err)
		}
		line.Color = plotutil.Color(i)
		line.Dashes = plotutil.Dashes(i / len(plotutil.DefaultColors))
		points.Color = line.Color
		points.Shape = plotutil.Shape(i)
		p.Add(line, points)
		p.Legend.Add(s.Name, line, points)
	}
	headroom(p)
	if err := p.Save(7*vg.Inch, 4.5*vg.Inch, path); err != nil {
		return fmt.Errorf("line plot %s: %w", path, err)
	}
	return nil
}

// WriteBarChart draws one bar per label, grouped side by side when several
// Bars are given (one colour each, with a legend), to path (PNG, SVG or
// PDF by extension): per-worker utilisation or bytes sent, say, for one or
// several schedules.
func WriteBarChart(path, title, ylabel string, labels []string, bars []Bars) error {
	if err := checkImagePath(path); err != nil {
		return fmt.Errorf("bar chart: %w", err)
	}
	if len(labels) == 0 || len(bars) == 0 {
		return fmt.Errorf("bar chart %s: no labels or no bars", path)
	}
	p := plot.New()
	p.Title.Text, p.Y.Label.Text = title, ylabel
	p.Legend.Top = true
	p.Add(plotter.NewGrid()) // under the bars
	// Groups share the space of one label: 0.8 in wide at most, narrower
	// when there are many labels.
	group := vg.Length(math.Min(0.8, 6.0/float64(len(labels)))) * vg.Inch
	width := group / vg.Length(len(bars))
	for i, b := range bars {
		if len(b.Values) != len(labels) {
			return fmt.Errorf("bar chart %s: bars %q have %d values for %d labels", path, b.Name, len(b.Values), len(labels))
		}
		for j, v := range b.Values {
			if !finite(v) {
				return fmt.Errorf("bar chart %s: bars %q value %d (%s) is %v, want a finite number", path, b.Name, j, labels[j], v)
			}
		}
		bc, err := plotter.NewBarChart(plotter.Values(b.Values), width)
		if err != nil {
			return fmt.Errorf("bar chart %s: bars %q: %w", path, b.Name, err)
		}
		bc.Color = plotutil.Color(i)
		bc.LineStyle = draw.LineStyle{}
		bc.Offset = width*vg.Length(i) - (group-width)/2
		p.Add(bc)
		if len(bars) > 1 || b.Name != "" {
			p.Legend.Add(b.Name, bc)
		}
	}
	p.NominalX(labels...)
	p.Y.Min = min(p.Y.Min, 0)
	headroom(p)
	w := vg.Length(math.Max(6, 1.5+0.5*float64(len(labels)))) * vg.Inch
	if err := p.Save(w, 4*vg.Inch, path); err != nil {
		return fmt.Errorf("bar chart %s: %w", path, err)
	}
	return nil
}

// WriteUtilizationChart draws each worker's utilisation (compute time over
// the makespan), one group of bars per worker and one bar per result.
func WriteUtilizationChart(path string, results ...*Result) error {
	return writePerWorker(path, "Utilisation per worker", "utilisation", results, func(r *Result, w WorkerStats) float64 {
		if r.MakespanS == 0 {
			return 0
		}
		return w.ComputeS / r.MakespanS
	})
}

// WriteBytesChart draws the bytes each worker sent to other nodes, in MiB.
func WriteBytesChart(path string, results ...*Result) error {
	return writePerWorker(path, "Bytes sent per worker", "MiB sent", results, func(_ *Result, w WorkerStats) float64 {
		return w.BytesSent / (1 << 20)
	})
}

func writePerWorker(path, title, ylabel string, results []*Result, value func(*Result, WorkerStats) float64) error {
	if len(results) == 0 {
		return fmt.Errorf("bar chart %s: no results", path)
	}
	n := 0
	for _, r := range results {
		n = max(n, len(r.PerWorker))
	}
	labels := make([]string, n)
	for i := range labels {
		labels[i] = fmt.Sprintf("w%d", i)
	}
	bars := make([]Bars, len(results))
	for i, r := range results {
		bars[i] = Bars{Name: r.Schedule, Values: make([]float64, n)}
		for _, w := range r.PerWorker {
			if w.Worker >= 0 && w.Worker < n {
				bars[i].Values[w.Worker] = value(r, w)
			}
		}
	}
	return WriteBarChart(path, title, ylabel, labels, bars)
}

// headroom raises the top of the y axis so the legend, drawn at the top
// right, does not cover the data.
func headroom(p *plot.Plot) {
	span := p.Y.Max - p.Y.Min
	if span <= 0 {
		span = math.Max(math.Abs(p.Y.Max), 1)
	}
	p.Y.Max += 0.2 * span
}

func finite(v float64) bool { return !math.IsNaN(v) && !math.IsInf(v, 0) }
