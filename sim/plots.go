package sim

import (
	"fmt"
	"image/color"
	"io"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
)

// Series is one named line of a line plot: Y[i] at X[i]. Series with the
// same Group share a colour and differ by Variant (dash and marker), so a
// sweep reads as one colour per schedule and one style per depth; with no
// Group every series gets its own colour.
type Series struct {
	Name    string
	X, Y    []float64
	Group   string
	Variant int
}

// Bars is one named group member of a bar chart: Values[i] belongs to the
// i-th label.
type Bars struct {
	Name   string
	Values []float64
}

// LinePlot is a line plot with markers and a legend.
type LinePlot struct {
	Title, XLabel, YLabel string
	Series                []Series
	// LogX2 puts x on a log-2 scale with a tick at every power of two
	// (all x must be positive): microbatch counts double along a sweep.
	LogX2 bool
	// Marks draws a thin vertical line at each x (events, e.g. failures).
	Marks []float64
}

// legendOutside is the series count from which the legend moves to the
// right of the plot, where it cannot hide the data.
const legendOutside = 5

// WriteLinePlot draws series as lines with markers and a legend to path
// (PNG, SVG or PDF by extension); loss curves and sweeps use it.
func WriteLinePlot(path, title, xlabel, ylabel string, series []Series) error {
	return LinePlot{Title: title, XLabel: xlabel, YLabel: ylabel, Series: series}.Write(path)
}

// Write draws the plot to path (PNG, SVG or PDF by extension).
func (lp LinePlot) Write(path string) error {
	if err := checkImagePath(path); err != nil {
		return fmt.Errorf("line plot: %w", err)
	}
	if len(lp.Series) == 0 {
		return fmt.Errorf("line plot %s: no series", path)
	}
	p := plot.New()
	p.Title.Text, p.X.Label.Text, p.Y.Label.Text = lp.Title, lp.XLabel, lp.YLabel
	p.Add(plotter.NewGrid())
	if lp.LogX2 {
		p.X.Scale = plot.LogScale{}
		p.X.Tick.Marker = pow2Ticks{}
	}
	legend := plot.NewLegend()
	legend.Top = true
	groups := map[string]int{}
	for i, s := range lp.Series {
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
			if lp.LogX2 && s.X[j] <= 0 {
				return fmt.Errorf("line plot %s: series %q point %d has x %v, want > 0 on a log scale", path, s.Name, j, s.X[j])
			}
			xys[j].X, xys[j].Y = s.X[j], s.Y[j]
		}
		line, points, err := plotter.NewLinePoints(xys)
		if err != nil {
			return fmt.Errorf("line plot %s: series %q: %w", path, s.Name, err)
		}
		colour, variant := i, i/len(plotutil.DefaultColors)
		if s.Group != "" {
			g, ok := groups[s.Group]
			if !ok {
				g = len(groups)
				groups[s.Group] = g
			}
			colour, variant = g, s.Variant
		}
		line.Color = plotutil.Color(colour)
		line.Dashes = plotutil.Dashes(variant)
		points.Color = line.Color
		points.Shape = plotutil.Shape(variant)
		p.Add(line, points)
		legend.Add(s.Name, line, points)
	}
	headroom(p)
	for _, x := range lp.Marks {
		if !finite(x) {
			continue
		}
		mark, err := plotter.NewLine(plotter.XYs{{X: x, Y: p.Y.Min}, {X: x, Y: p.Y.Max}})
		if err != nil {
			return fmt.Errorf("line plot %s: mark at %v: %w", path, x, err)
		}
		mark.Color = color.Gray{Y: 160}
		mark.Width = vg.Points(0.5)
		mark.Dashes = []vg.Length{vg.Points(2), vg.Points(2)}
		p.Add(mark)
	}
	if err := saveWithLegend(p, legend, len(lp.Series), path); err != nil {
		return fmt.Errorf("line plot %s: %w", path, err)
	}
	return nil
}

// saveWithLegend writes p with legend, inside the plot for a few entries
// and in a column of its own, right of the plot, for legendOutside or
// more, where it cannot hide the data.
func saveWithLegend(p *plot.Plot, legend plot.Legend, entries int, path string) error {
	w, h := 7*vg.Inch, 4.5*vg.Inch
	if entries < legendOutside {
		p.Legend = legend
		return p.Save(w, h, path)
	}
	legendW := 1.9 * vg.Inch
	img, err := draw.NewFormattedCanvas(w+legendW, h, strings.TrimPrefix(strings.ToLower(filepath.Ext(path)), "."))
	if err != nil {
		return err
	}
	dc := draw.New(img)
	plotArea := dc
	plotArea.Max.X = dc.Min.X + w
	legendArea := dc
	legendArea.Min.X = dc.Min.X + w
	p.Draw(plotArea)
	legend.Draw(legendArea)
	return writeCanvas(img, path)
}

// writeCanvas writes a drawn canvas to path.
func writeCanvas(c io.WriterTo, path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := c.WriteTo(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// pow2Ticks marks every power of two in range, labelling them plainly.
type pow2Ticks struct{}

func (pow2Ticks) Ticks(lo, hi float64) []plot.Tick {
	var ts []plot.Tick
	for e := math.Floor(math.Log2(lo)); ; e++ {
		v := math.Exp2(e)
		if v > hi*(1+1e-9) {
			break
		}
		if v >= lo*(1-1e-9) {
			ts = append(ts, plot.Tick{Value: v, Label: strconv.FormatFloat(v, 'g', -1, 64)})
		}
	}
	return ts
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
