package sim

import (
	"bytes"
	"image"
	"image/png"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"stagecoach/scheduler"
)

// decodePNG checks that path is a PNG of a plausible size and returns
// its bounds.
func decodePNG(t *testing.T, path string) image.Rectangle {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatalf("%s does not decode as PNG: %v", path, err)
	}
	b := img.Bounds()
	if b.Dx() < 100 || b.Dy() < 100 {
		t.Fatalf("%s is only %v", path, b)
	}
	return b
}

func TestWriteLinePlot(t *testing.T) {
	var series []Series
	for _, p := range []int{2, 4, 8} {
		s := Series{Name: "1f1b p=" + strconv.Itoa(p)}
		for m := 1; m <= 16; m *= 2 {
			s.X = append(s.X, float64(m))
			s.Y = append(s.Y, float64(p-1)/float64(m+p-1))
		}
		series = append(series, s)
	}
	dir := t.TempDir()
	if err := WriteLinePlot(filepath.Join(dir, "l.png"), "Bubble fraction", "microbatches m", "bubble fraction", series); err != nil {
		t.Fatal(err)
	}
	decodePNG(t, filepath.Join(dir, "l.png"))
	var svgs [2][]byte
	for i := range svgs {
		path := filepath.Join(dir, "l.svg")
		if err := WriteLinePlot(path, "Bubble fraction", "m", "bubble", series); err != nil {
			t.Fatal(err)
		}
		svgs[i], _ = os.ReadFile(path)
	}
	if !bytes.Equal(svgs[0], svgs[1]) || !bytes.Contains(svgs[0], []byte("<svg")) {
		t.Fatal("line plot SVG is not deterministic or not SVG")
	}

	for _, bad := range [][]Series{
		nil,
		{{Name: "short", X: []float64{1, 2}, Y: []float64{1}}},
		{{Name: "nan", X: []float64{1}, Y: []float64{math.NaN()}}},
	} {
		if err := WriteLinePlot(filepath.Join(dir, "bad.png"), "", "", "", bad); err == nil {
			t.Errorf("%v: want an error", bad)
		}
	}
	if err := WriteLinePlot(filepath.Join(dir, "x.bmp"), "", "", "", series); err == nil || !strings.Contains(err.Error(), ".bmp") {
		t.Errorf("bmp: err %v", err)
	}
}

func TestWriteBarCharts(t *testing.T) {
	var rs []*Result
	for _, name := range []string{"gpipe", "1f1b"} {
		rs = append(rs, detailRun(t, slowLinks(), name, scheduler.Spec{Stages: 4, Microbatches: 8}))
	}
	dir := t.TempDir()
	for _, f := range []func(string, ...*Result) error{WriteUtilizationChart, WriteBytesChart} {
		for _, ext := range []string{"png", "svg"} {
			path := filepath.Join(dir, "b."+ext)
			if err := f(path, rs...); err != nil {
				t.Fatal(err)
			}
			if ext == "png" {
				decodePNG(t, path)
			} else if data, _ := os.ReadFile(path); !bytes.Contains(data, []byte("<svg")) {
				t.Fatal("bar chart SVG lacks an svg element")
			}
		}
	}
	if err := WriteBarChart(filepath.Join(dir, "one.png"), "one", "y", []string{"a", "b"}, []Bars{{Values: []float64{1, 2}}}); err != nil {
		t.Fatal(err)
	}
	decodePNG(t, filepath.Join(dir, "one.png"))
	if err := WriteBarChart(filepath.Join(dir, "bad.png"), "", "", []string{"a"}, []Bars{{Name: "x", Values: []float64{1, 2}}}); err == nil {
		t.Fatal("mismatched values: want an error")
	}
}

// A sweep's many series: one colour per group, the legend beside the plot
// (the picture widens), log-2 ticks at the powers of two.
func TestLinePlotGroupsLegendOutsideAndLog2(t *testing.T) {
	var series []Series
	for _, name := range []string{"gpipe", "1f1b", "zb-h1"} {
		for v, p := range []int{2, 4, 8} {
			s := Series{Name: name + " p=" + strconv.Itoa(p), Group: name, Variant: v}
			for m := 1; m <= 64; m *= 2 {
				s.X = append(s.X, float64(m))
				s.Y = append(s.Y, float64(p-1)/float64(m+p-1))
			}
			series = append(series, s)
		}
	}
	dir := t.TempDir()
	few, many := filepath.Join(dir, "few.png"), filepath.Join(dir, "many.png")
	if err := (LinePlot{Series: series[:2], LogX2: true}).Write(few); err != nil {
		t.Fatal(err)
	}
	if err := (LinePlot{Series: series, LogX2: true}).Write(many); err != nil {
		t.Fatal(err)
	}
	if wf, wm := decodePNG(t, few).Dx(), decodePNG(t, many).Dx(); wm <= wf {
		t.Errorf("legend of %d series not beside the plot: width %d, %d with two series", len(series), wm, wf)
	}
	var labels []string
	for _, tk := range (pow2Ticks{}).Ticks(1, 64) {
		labels = append(labels, tk.Label)
	}
	if got := strings.Join(labels, " "); got != "1 2 4 8 16 32 64" {
		t.Errorf("log-2 ticks %q", got)
	}
	bad := []Series{{Name: "zero", X: []float64{0, 1}, Y: []float64{1, 2}}}
	if err := (LinePlot{Series: bad, LogX2: true}).Write(filepath.Join(dir, "bad.png")); err == nil || !strings.Contains(err.Error(), "log scale") {
		t.Errorf("x = 0 on a log scale: err %v", err)
	}
}
