package sim

import (
	"fmt"
	"image/color"
	"math"
	"path/filepath"
	"strconv"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/font"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"

	"stagecoach/scheduler"
)

// GanttOptions tune WriteGantt. The zero value draws everything at a size
// derived from the number of workers.
type GanttOptions struct {
	// Width and Height of the image; 0 picks 12 in wide and 0.45 in per
	// worker.
	Width, Height vg.Length
	// Title replaces the default title (schedule, iteration time, bubble).
	Title string
	// HideSends leaves out the thin send bars under each row.
	HideSends bool
	// Paths joins each microbatch's forward actions in path order. Plans
	// that skip or swap stages get these lines regardless.
	Paths bool
}

// WriteGantt draws r's timeline to path, as PNG, SVG or PDF by its
// extension. Rows are workers (worker 0 on top), x is virtual time.
// Boxes are coloured by microbatch: forward solid, full backward darker
// and hatched, input gradient darker, weight gradient light; loss,
// all-reduce and optimizer step are grey. Boxes wide enough carry their
// action ("F3", "B3"). Sends are thin bars under the sender's row. For
// plans that skip stages, a line per microbatch joins its forward actions
// (and its loss) in path order, so skips and swaps show. The result needs
// its Timeline: run with Options{Detail: true}.
func WriteGantt(path string, r *Result, opts GanttOptions) error {
	if err := checkImagePath(path); err != nil {
		return fmt.Errorf("gantt: %w", err)
	}
	if r == nil || r.Plan == nil {
		return fmt.Errorf("gantt %s: result has no plan", path)
	}
	if len(r.Timeline) == 0 && r.Plan.TotalActions() > 0 {
		return fmt.Errorf("gantt %s: result (%s) has no timeline; simulate with Options{Detail: true}", path, r.Schedule)
	}
	workers := len(r.Plan.Workers)
	if workers == 0 {
		return fmt.Errorf("gantt %s: plan has no workers", path)
	}

	p := plot.New()
	p.Title.Text = opts.Title
	if p.Title.Text == "" {
		p.Title.Text = fmt.Sprintf("%s: iteration %s s, bubble %.1f%% (%d workers, %d microbatches)",
			r.Schedule, strconv.FormatFloat(r.IterationTimeS, 'g', 5, 64), 100*r.BubbleFraction, workers, r.Microbatches)
	}
	p.X.Label.Text = "time (s)   solid: forward, hatched: backward, dark: input grad, light: weight grad, grey: loss/all-reduce/step, thin: sends"
	p.X.Label.TextStyle.Font.Size = 8
	p.Y.Label.Text = "worker"
	ticks := make(plot.ConstantTicks, workers)
	for w, wk := range r.Plan.Workers {
		ticks[w] = plot.Tick{Value: ganttRow(w, workers), Label: workerLabel(w, wk)}
	}
	p.Y.Tick.Marker = ticks
	p.X.Tick.Marker = timeTicks{}

	g := &ganttPlotter{r: r, opts: opts, workers: workers, multiStage: map[int]bool{}}
	for w, wk := range r.Plan.Workers {
		g.multiStage[w] = len(wk.Stages) > 1
	}
	grid := plotter.NewGrid()
	grid.Horizontal.Color = nil // rows already separate workers
	p.Add(grid, g)
	// Pin the ranges: the grid has none, and an empty timeline still
	// needs a non-degenerate axis.
	p.X.Min, p.X.Max, p.Y.Min, p.Y.Max = g.DataRange()

	width, height := opts.Width, opts.Height
	if width <= 0 {
		width = 12 * vg.Inch
	}
	if height <= 0 {
		height = vg.Length(1.4+0.45*float64(workers)) * vg.Inch
	}
	if err := p.Save(width, height, path); err != nil {
		return fmt.Errorf("gantt %s: %w", path, err)
	}
	return nil
}

// checkImagePath accepts the formats gonum/plot writes that we promise.
func checkImagePath(path string) error {
	switch ext := strings.ToLower(filepath.Ext(path)); ext {
	case ".png", ".svg", ".pdf":
		return nil
	default:
		return fmt.Errorf("%s: unsupported image type %q (want .png, .svg or .pdf)", path, ext)
	}
}

// ganttRow puts worker 0 on top.
func ganttRow(w, workers int) float64 { return float64(workers - 1 - w) }

func workerLabel(w int, wk scheduler.Worker) string {
	s := make([]string, len(wk.Stages))
	for i, st := range wk.Stages {
		s[i] = strconv.Itoa(st)
	}
	return fmt.Sprintf("w%d s%s", w, strings.Join(s, ","))
}

// Band heights within a row of height 1 centred on the row value.
const (
	computeLo, computeHi = -0.30, 0.42
	sendLo, sendHi       = -0.44, -0.36
)

type ganttPlotter struct {
	r       *Result
	opts    GanttOptions
	workers int
	// multiStage marks workers holding several stages (interleaved and V
	// schedules), whose labels must say which stage an action ran.
	multiStage map[int]bool
}

// timeTicks marks round times (1, 2 or 5 times a power of ten) about ten
// to an axis, every label with the decimals its step needs, so charts of
// different schedules read alike.
type timeTicks struct{}

func (timeTicks) Ticks(lo, hi float64) []plot.Tick {
	span := hi - lo
	if !(span > 0) || math.IsInf(span, 0) {
		return []plot.Tick{{Value: lo, Label: strconv.FormatFloat(lo, 'g', 4, 64)}}
	}
	raw := span / 10
	mag := math.Pow(10, math.Floor(math.Log10(raw)))
	step := mag
	for _, f := range []float64{1, 2, 5, 10} {
		if f*mag >= raw {
			step = f * mag
			break
		}
	}
	decimals := max(0, int(-math.Floor(math.Log10(step)+1e-9)))
	var ts []plot.Tick
	for v := math.Ceil(lo/step) * step; v <= hi+step*1e-9; v += step {
		ts = append(ts, plot.Tick{Value: v, Label: strconv.FormatFloat(v, 'f', decimals, 64)})
		// Minor ticks halfway, unlabelled.
		if m := v + step/2; m <= hi {
			ts = append(ts, plot.Tick{Value: m})
		}
	}
	return ts
}

// DataRange implements plot.DataRanger.
func (g *ganttPlotter) DataRange() (xmin, xmax, ymin, ymax float64) {
	end := g.r.MakespanS
	for _, s := range g.r.Timeline {
		end = max(end, s.End)
	}
	if end <= 0 {
		end = 1
	}
	return 0, end, -0.5, float64(g.workers) - 0.5
}

// Plot implements plot.Plotter.
func (g *ganttPlotter) Plot(c draw.Canvas, plt *plot.Plot) {
	trX, trY := plt.Transforms(&c)
	label := draw.TextStyle{
		Font:    font.From(plot.DefaultFont, 7),
		XAlign:  draw.XCenter,
		YAlign:  draw.YCenter,
		Handler: plt.TextHandler,
	}
	rect := func(s Slice, lo, hi float64) vg.Rectangle {
		y := ganttRow(s.Worker, g.workers)
		return vg.Rectangle{Min: vg.Point{X: trX(s.Start), Y: trY(y + lo)}, Max: vg.Point{X: trX(s.End), Y: trY(y + hi)}}
	}
	if !g.opts.HideSends {
		for _, s := range g.r.Timeline {
			if s.Track == TrackComm && s.End > s.Start {
				fill(&c, rect(s, sendLo, sendHi), withAlpha(mbColor(s.Action.Microbatch), 170))
			}
		}
	}
	outline := draw.LineStyle{Color: color.White, Width: vg.Points(0.4)}
	for _, s := range g.r.Timeline {
		if s.Track != TrackCompute || s.End <= s.Start {
			continue
		}
		box := rect(s, computeLo, computeHi)
		base := mbColor(s.Action.Microbatch)
		var clr color.Color
		hatch := false
		switch s.Action.Kind {
		case scheduler.Forward:
			clr = base
		case scheduler.Backward:
			clr, hatch = shade(base, 0.55), true
		case scheduler.BackwardInput:
			clr = shade(base, 0.6)
		case scheduler.BackwardWeight:
			clr = tint(base, 0.55)
		case scheduler.Loss:
			clr = color.RGBA{0xbd, 0xbd, 0xbd, 0xff}
		case scheduler.AllReduce:
			clr = color.RGBA{0x96, 0x96, 0x96, 0xff}
		case scheduler.Overlapped:
			// The forward's colour, hatched like a backward.
			clr, hatch = base, true
		default:
			clr = color.RGBA{0x63, 0x63, 0x63, 0xff}
		}
		fill(&c, box, clr)
		if hatch {
			hatchRect(&c, box, draw.LineStyle{Color: withAlpha(color.White, 110), Width: vg.Points(0.6)}, vg.Points(4))
		}
		c.StrokeLines(outline, []vg.Point{box.Min, {X: box.Max.X, Y: box.Min.Y}, box.Max, {X: box.Min.X, Y: box.Max.Y}, box.Min})
		g.label(&c, label, box, s.Worker, s.Action, clr)
	}
	if g.opts.Paths || g.r.Plan.Skip != nil || g.r.Plan.Skips() {
		g.paths(&c, trX, trY)
	}
}

// label writes the action into its box when it fits, else the bare
// microbatch number, else nothing. On a worker that holds several stages
// the stage leads, as in PyTorch's action names ("4F0": stage 4, forward,
// microbatch 0), so its chunks tell apart.
func (g *ganttPlotter) label(c *draw.Canvas, sty draw.TextStyle, box vg.Rectangle, worker int, a scheduler.Action, bg color.Color) {
	text := a.Kind.Code()
	if a.Microbatch >= 0 {
		text += strconv.Itoa(a.Microbatch)
		if g.multiStage[worker] && a.Stage >= 0 {
			text = strconv.Itoa(a.Stage) + text
		}
	}
	if f, b, ok := a.Halves(); ok {
		// "F3+I1", or with stages "4F3+3I1".
		text = "F" + strconv.Itoa(f.Microbatch) + "+" + b.Kind.Code() + strconv.Itoa(b.Microbatch)
		if g.multiStage[worker] {
			text = strconv.Itoa(f.Stage) + "F" + strconv.Itoa(f.Microbatch) + "+" + strconv.Itoa(b.Stage) + b.Kind.Code() + strconv.Itoa(b.Microbatch)
		}
	}
	room := box.Max.X - box.Min.X - vg.Points(2)
	if sty.Width(text) > room {
		if a.Microbatch < 0 {
			return
		}
		text = strconv.Itoa(a.Microbatch)
		if sty.Width(text) > room {
			return
		}
	}
	sty.Color = color.Black
	if luminance(bg) < 0.45 {
		sty.Color = color.White
	}
	c.FillText(sty, vg.Point{X: (box.Min.X + box.Max.X) / 2, Y: (box.Min.Y + box.Max.Y) / 2}, text)
}

// paths joins the forward slices of each microbatch, per iteration, in
// the order of its path, ending at its loss.
func (g *ganttPlotter) paths(c *draw.Canvas, trX, trY func(float64) vg.Length) {
	type key struct{ iter, mb, stage, worker int }
	fwd := map[key]Slice{}
	loss := map[[2]int]Slice{}
	iters := 0
	for _, s := range g.r.Timeline {
		if s.Track != TrackCompute {
			continue
		}
		iters = max(iters, s.Iteration+1)
		switch s.Action.Kind {
		case scheduler.Forward:
			fwd[key{s.Iteration, s.Action.Microbatch, s.Action.Stage, s.Worker}] = s
		case scheduler.Loss:
			loss[[2]int{s.Iteration, s.Action.Microbatch}] = s
		}
	}
	mid := func(s Slice) vg.Point {
		return vg.Point{X: trX((s.Start + s.End) / 2), Y: trY(ganttRow(s.Worker, g.workers) + (computeLo+computeHi)/2)}
	}
	dot := draw.GlyphStyle{Shape: draw.CircleGlyph{}, Radius: vg.Points(1.6)}
	for it := 0; it < iters; it++ {
		for mb, m := range g.r.Plan.Microbatches {
			var pts []vg.Point
			for _, h := range m.Path {
				if s, ok := fwd[key{it, mb, h.Stage, h.Worker}]; ok {
					pts = append(pts, mid(s))
				}
			}
			if s, ok := loss[[2]int{it, mb}]; ok {
				pts = append(pts, mid(s))
			}
			if len(pts) < 2 {
				continue
			}
			clr := withAlpha(shade(mbColor(mb), 0.7), 220)
			c.StrokeLines(draw.LineStyle{Color: clr, Width: vg.Points(1)}, pts)
			dot.Color = clr
			for _, pt := range pts {
				c.DrawGlyph(dot, pt)
			}
		}
	}
}

func fill(c *draw.Canvas, r vg.Rectangle, clr color.Color) {
	c.FillPolygon(clr, []vg.Point{r.Min, {X: r.Max.X, Y: r.Min.Y}, r.Max, {X: r.Min.X, Y: r.Max.Y}})
}

// hatchRect strokes 45-degree lines spaced step apart inside r.
func hatchRect(c *draw.Canvas, r vg.Rectangle, sty draw.LineStyle, step vg.Length) {
	var lines [][]vg.Point
	// Lines x - y = d for d spanning every diagonal that meets r.
	for d := r.Min.X - r.Max.Y + step/2; d < r.Max.X-r.Min.Y; d += step {
		y0 := max(r.Min.Y, r.Min.X-d)
		y1 := min(r.Max.Y, r.Max.X-d)
		if y1 > y0 {
			lines = append(lines, []vg.Point{{X: y0 + d, Y: y0}, {X: y1 + d, Y: y1}})
		}
	}
	c.StrokeLines(sty, lines...)
}

// ganttPalette is a qualitative palette without greys (those mark loss,
// all-reduce and step); neighbouring microbatches get distinct hues.
var ganttPalette = []color.RGBA{
	{0x1f, 0x77, 0xb4, 0xff}, {0xff, 0x7f, 0x0e, 0xff}, {0x2c, 0xa0, 0x2c, 0xff}, {0xd6, 0x27, 0x28, 0xff},
	{0x94, 0x67, 0xbd, 0xff}, {0x8c, 0x56, 0x4b, 0xff}, {0xe3, 0x77, 0xc2, 0xff}, {0xbc, 0xbd, 0x22, 0xff},
	{0x17, 0xbe, 0xcf, 0xff}, {0x39, 0x3b, 0x79, 0xff}, {0xe7, 0xba, 0x52, 0xff}, {0x63, 0x79, 0x39, 0xff},
}

// mbColor is microbatch mb's colour. A multiplier coprime to the palette
// size walks it so that microbatches 0, 1, 2, ... alternate warm and cool.
func mbColor(mb int) color.RGBA {
	n := len(ganttPalette)
	if mb < 0 {
		return color.RGBA{0x80, 0x80, 0x80, 0xff}
	}
	return ganttPalette[(mb*5)%n]
}

func shade(c color.RGBA, f float64) color.RGBA {
	return color.RGBA{uint8(float64(c.R) * f), uint8(float64(c.G) * f), uint8(float64(c.B) * f), c.A}
}

func tint(c color.RGBA, f float64) color.RGBA {
	up := func(v uint8) uint8 { return uint8(float64(v) + (255-float64(v))*f) }
	return color.RGBA{up(c.R), up(c.G), up(c.B), c.A}
}

// withAlpha returns clr at opacity a, premultiplied as color.RGBA wants.
func withAlpha(clr color.Color, a uint8) color.RGBA {
	r, g, b, _ := clr.RGBA()
	f := float64(a) / 255
	return color.RGBA{uint8(float64(r>>8) * f), uint8(float64(g>>8) * f), uint8(float64(b>>8) * f), a}
}

func luminance(clr color.Color) float64 {
	r, g, b, _ := clr.RGBA()
	return (0.299*float64(r) + 0.587*float64(g) + 0.114*float64(b)) / 0xffff
}
