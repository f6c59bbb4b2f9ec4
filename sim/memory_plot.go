package sim

import (
	"fmt"
	"image/color"
	"math"
	"sort"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
)

// WriteMemoryPlot draws every worker's memory over simulated time to path
// (PNG, SVG or PDF by extension): one step line per worker and each
// distinct node capacity as a dashed line. r must come from a run with
// Options.MemoryTimeline.
func WriteMemoryPlot(path string, r *Result) error {
	if err := checkImagePath(path); err != nil {
		return fmt.Errorf("memory plot: %w", err)
	}
	if r == nil || len(r.Memory) == 0 {
		return fmt.Errorf("memory plot %s: no memory timeline (simulate with Options.MemoryTimeline)", path)
	}
	// One unit for the axis, from the largest value drawn.
	top := 0.0
	for _, s := range r.Memory {
		top = max(top, s.Capacity)
		for _, b := range s.Bytes {
			top = max(top, b)
		}
	}
	unit, name := 1.0, "B"
	for _, u := range []struct {
		v float64
		n string
	}{{1 << 30, "GiB"}, {1 << 20, "MiB"}, {1 << 10, "KiB"}} {
		if top >= u.v {
			unit, name = u.v, u.n
			break
		}
	}
	end := r.MakespanS
	p := plot.New()
	p.Title.Text = "Memory per worker: " + r.Schedule
	p.X.Label.Text, p.Y.Label.Text = "time (s)", name
	p.Add(plotter.NewGrid())
	legend := plot.NewLegend()
	legend.Top = true
	for _, s := range r.Memory {
		if len(s.T) != len(s.Bytes) || len(s.T) == 0 {
			return fmt.Errorf("memory plot %s: worker %d has %d times and %d values", path, s.Worker, len(s.T), len(s.Bytes))
		}
		xys := make(plotter.XYs, 0, len(s.T)+1)
		for i := 0; i < len(s.T); {
			// Changes at one instant (an action ending as the next
			// starts) draw as the highest value reached then and the
			// value after them: no dip that lasts no time.
			j, hi := i, s.Bytes[i]
			for ; j < len(s.T) && s.T[j] == s.T[i]; j++ {
				if !finite(s.T[j]) || !finite(s.Bytes[j]) {
					return fmt.Errorf("memory plot %s: worker %d point %d is (%v, %v), want finite numbers", path, s.Worker, j, s.T[j], s.Bytes[j])
				}
				hi = max(hi, s.Bytes[j])
			}
			if last := s.Bytes[j-1]; hi > last {
				xys = append(xys, plotter.XY{X: s.T[i], Y: hi / unit})
			}
			xys = append(xys, plotter.XY{X: s.T[i], Y: s.Bytes[j-1] / unit})
			end = max(end, s.T[i])
			i = j
		}
		// Hold the last value to the end of the run.
		xys = append(xys, plotter.XY{X: end, Y: xys[len(xys)-1].Y})
		line, err := plotter.NewLine(xys)
		if err != nil {
			return fmt.Errorf("memory plot %s: worker %d: %w", path, s.Worker, err)
		}
		line.StepStyle = plotter.PostStep
		line.Color = plotutil.Color(s.Worker)
		line.Width = vg.Points(1.5)
		p.Add(line)
		legend.Add(fmt.Sprintf("worker %d", s.Worker), line)
	}
	// Capacities: one dashed line per distinct value, naming the nodes.
	caps := map[float64][]string{}
	for _, s := range r.Memory {
		if s.Capacity > 0 {
			caps[s.Capacity] = append(caps[s.Capacity], s.Node)
		}
	}
	values := make([]float64, 0, len(caps))
	for v := range caps {
		values = append(values, v)
	}
	sort.Float64s(values)
	for i, v := range values {
		line, err := plotter.NewLine(plotter.XYs{{X: 0, Y: v / unit}, {X: math.Max(end, 1e-9), Y: v / unit}})
		if err != nil {
			return fmt.Errorf("memory plot %s: capacity: %w", path, err)
		}
		line.Color = color.Gray{Y: uint8(40 + 50*(i%3))}
		line.Width = vg.Points(1.5)
		line.Dashes = []vg.Length{vg.Points(6), vg.Points(4)}
		p.Add(line)
		label := "capacity " + formatUnit(v/unit, name)
		if len(values) > 1 {
			nodes := caps[v]
			label += " (" + nodes[0]
			if len(nodes) > 1 {
				label += fmt.Sprintf(" +%d", len(nodes)-1)
			}
			label += ")"
		}
		legend.Add(label, line)
	}
	p.Y.Min = 0
	headroom(p)
	if err := saveWithLegend(p, legend, len(r.Memory)+len(values), path); err != nil {
		return fmt.Errorf("memory plot %s: %w", path, err)
	}
	return nil
}

func formatUnit(v float64, unit string) string {
	return fmt.Sprintf("%.3g %s", v, unit)
}
