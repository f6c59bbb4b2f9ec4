package train

import (
	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"image/color"
)

// PlotLoss draws training and validation loss against step, with the
// unigram baseline (the loss of a context-free model) as a dashed line.
func PlotLoss(path string, hist []Point, unigram float64) error {
	p := plot.New()
	p.Title.Text = "stagecoach train"
	p.X.Label.Text = "step"
	p.Y.Label.Text = "loss (nats/byte)"
	var train, val plotter.XYs
	for _, h := range hist {
		if h.Val {
			val = append(val, plotter.XY{X: float64(h.Step), Y: h.Loss})
		} else {
			train = append(train, plotter.XY{X: float64(h.Step), Y: h.Loss})
		}
	}
	if len(train) > 0 {
		l, err := plotter.NewLine(train)
		if err != nil {
			return err
		}
		l.Color = color.RGBA{R: 30, G: 90, B: 200, A: 255}
		p.Add(l)
		p.Legend.Add("train", l)
		base, err := plotter.NewLine(plotter.XYs{{X: train[0].X, Y: unigram}, {X: train[len(train)-1].X, Y: unigram}})
		if err != nil {
			return err
		}
		base.Dashes = []vg.Length{vg.Points(4), vg.Points(3)}
		base.Color = color.Gray{Y: 100}
		p.Add(base)
		p.Legend.Add("unigram baseline", base)
	}
	if len(val) > 0 {
		l, sc, err := plotter.NewLinePoints(val)
		if err != nil {
			return err
		}
		l.Color = color.RGBA{R: 210, G: 60, B: 30, A: 255}
		sc.Color = l.Color
		p.Add(l, sc)
		p.Legend.Add("validation", l, sc)
	}
	p.Legend.Top = true
	p.Add(plotter.NewGrid())
	return p.Save(8*vg.Inch, 5*vg.Inch, path)
}
