package sim

import (
	"bytes"
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"stagecoach/scheduler"
)

// skippingPlan is a 3-stage pipeline where microbatch 1 skips stage 1 and
// microbatch 2 swaps stages 1 and 2; the loss is back on the origin, as
// in SkipPipe.
func skippingPlan() *scheduler.Plan {
	F, B, L := scheduler.F, scheduler.B, scheduler.L
	return &scheduler.Plan{
		Version: scheduler.FormatVersion, Schedule: "skip-demo",
		Stages:    []scheduler.Stage{{FirstLayer: 0, Layers: 1}, {FirstLayer: 1, Layers: 1}, {FirstLayer: 2, Layers: 1}},
		HeadStage: 0,
		Workers:   []scheduler.Worker{{Node: "a", Stages: []int{0}}, {Node: "b", Stages: []int{1}}, {Node: "c", Stages: []int{2}}},
		Microbatches: []scheduler.Microbatch{
			{Samples: 1, Path: []scheduler.Hop{{Worker: 0, Stage: 0}, {Worker: 1, Stage: 1}, {Worker: 2, Stage: 2}}},
			{Samples: 1, Path: []scheduler.Hop{{Worker: 0, Stage: 0}, {Worker: 2, Stage: 2}}},
			{Samples: 1, Path: []scheduler.Hop{{Worker: 0, Stage: 0}, {Worker: 2, Stage: 2}, {Worker: 1, Stage: 1}}},
		},
		Programs: [][]scheduler.Action{
			{F(0, 0), F(1, 0), F(2, 0), L(0, 0), L(1, 0), B(0, 0), B(1, 0), L(2, 0), B(2, 0), scheduler.Step()},
			{F(0, 1), B(0, 1), F(2, 1), B(2, 1), scheduler.Step()},
			{F(0, 2), F(1, 2), B(0, 2), B(1, 2), F(2, 2), B(2, 2), scheduler.Step()},
		},
		Skip: &scheduler.SkipRules{PathStages: 2, MaxSwaps: 1, SwapDistance: 1, MaxJump: 2},
	}
}

func TestWriteGanttPNGAndSVG(t *testing.T) {
	dir := t.TempDir()
	r := detailRun(t, slowLinks(), "1f1b", scheduler.Spec{Stages: 4, Microbatches: 8})
	pngPath := filepath.Join(dir, "g.png")
	if err := WriteGantt(pngPath, r, GanttOptions{}); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(pngPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatalf("gantt PNG does not decode: %v", err)
	}
	if b := img.Bounds(); b.Dx() < 100 || b.Dy() < 100 {
		t.Fatalf("gantt PNG is %v", b)
	}

	svg1, svg2 := filepath.Join(dir, "a.svg"), filepath.Join(dir, "b.svg")
	if err := WriteGantt(svg1, r, GanttOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := WriteGantt(svg2, detailRun(t, slowLinks(), "1f1b", scheduler.Spec{Stages: 4, Microbatches: 8}), GanttOptions{}); err != nil {
		t.Fatal(err)
	}
	a, _ := os.ReadFile(svg1)
	b, _ := os.ReadFile(svg2)
	if len(a) == 0 || !bytes.Equal(a, b) {
		t.Fatalf("SVG not deterministic (%d vs %d bytes)", len(a), len(b))
	}
	if !bytes.Contains(a, []byte("<svg")) || !bytes.Contains(a, []byte("1f1b")) {
		t.Fatal("SVG lacks the svg element or the schedule name")
	}
}

func TestWriteGanttSkippingPlan(t *testing.T) {
	p := skippingPlan()
	r, err := Run(p, slowLinks(), Options{Detail: true})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := WriteGantt(filepath.Join(dir, "skip.png"), r, GanttOptions{}); err != nil {
		t.Fatal(err)
	}
	// The path lines set a skipping chart apart: drawn from the same
	// timeline, the SVG with them is larger than one whose plan hides the
	// skip rules and paths.
	var plain, skip bytes.Buffer
	for _, out := range []struct {
		buf   *bytes.Buffer
		paths bool
	}{{&plain, false}, {&skip, true}} {
		path := filepath.Join(dir, "p.svg")
		rr := *r
		pl := *p
		if !out.paths {
			pl.Skip = nil
			pl.Microbatches = nil // Skips() sees no paths
		}
		rr.Plan = &pl
		if err := WriteGantt(path, &rr, GanttOptions{}); err != nil {
			t.Fatal(err)
		}
		data, _ := os.ReadFile(path)
		out.buf.Write(data)
	}
	if skip.Len() <= plain.Len() {
		t.Fatalf("skipping chart (%d bytes) draws no more than the plain one (%d)", skip.Len(), plain.Len())
	}
}

func TestWriteGanttErrors(t *testing.T) {
	r := detailRun(t, slowLinks(), "gpipe", scheduler.Spec{Stages: 2, Microbatches: 2})
	if err := WriteGantt(filepath.Join(t.TempDir(), "x.gif"), r, GanttOptions{}); err == nil || !strings.Contains(err.Error(), ".gif") {
		t.Fatalf("gif: err %v, want one naming the extension", err)
	}
	noDetail := *r
	noDetail.Timeline = nil
	if err := WriteGantt(filepath.Join(t.TempDir(), "x.png"), &noDetail, GanttOptions{}); err == nil || !strings.Contains(err.Error(), "Detail") {
		t.Fatalf("no timeline: err %v", err)
	}
}

// An interleaved worker holds two stages: its labels name the stage, so
// chunks tell apart, while a worker of one stage keeps the short label.
func TestGanttLabelsNameTheStageOnMultiStageWorkers(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		schedule   string
		want, lack string
	}{
		{"interleaved", ">4F0<", ">F0<"},
		{"1f1b", ">F0<", ">0F0<"},
	} {
		r := detailRun(t, Homogeneous(), tc.schedule, scheduler.Spec{Stages: 4, Microbatches: 8, Layers: 8})
		path := filepath.Join(dir, tc.schedule+".svg")
		if err := WriteGantt(path, r, GanttOptions{}); err != nil {
			t.Fatal(err)
		}
		svg, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Contains(svg, []byte(tc.want)) || bytes.Contains(svg, []byte(tc.lack)) {
			t.Errorf("%s: want a label %s and none %s", tc.schedule, tc.want, tc.lack)
		}
	}
}

func TestTimeTicksAreRoundAndAlike(t *testing.T) {
	for _, tc := range []struct {
		lo, hi float64
		labels []string
	}{
		{0, 57, []string{"0", "10", "20", "30", "40", "50"}},
		{0, 0.33, []string{"0.00", "0.05", "0.10", "0.15", "0.20", "0.25", "0.30"}},
		{0, 1, []string{"0.0", "0.1", "0.2", "0.3", "0.4", "0.5", "0.6", "0.7", "0.8", "0.9", "1.0"}},
	} {
		var labels []string
		for _, tk := range (timeTicks{}).Ticks(tc.lo, tc.hi) {
			if tk.Label != "" {
				labels = append(labels, tk.Label)
			}
		}
		if strings.Join(labels, " ") != strings.Join(tc.labels, " ") {
			t.Errorf("ticks of [%v, %v] = %v, want %v", tc.lo, tc.hi, labels, tc.labels)
		}
	}
}
