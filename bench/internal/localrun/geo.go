package localrun

import (
	"context"
	"fmt"
	"os"

	"stagecoach/coordinator"
	"stagecoach/data"
	"stagecoach/model"
	"stagecoach/planner"
	"stagecoach/sim"
)

// Geo is a bench setting on the SkipPipe authors' 12-region cluster (the
// skippipe-geo preset) emulated on loopback with links scaled for the
// model: one calibrated cost model for every run, and one validation set.
type Geo struct {
	Out, Corpus string
	MaxBytes    int64
	Train       model.TrainConfig
	Cluster     *sim.Cluster
	Nodes       []string
	// Costs is calibrated from a short GPipe run (skippipe-full).
	Costs *sim.Cluster
	// Val is the held-out windows every validation loss is measured on.
	Val []int32
}

// NewGeo scales the preset's links for tc, calibrates the cost model
// with a 5-step GPipe run and draws windows validation windows (corpus ""
// means the default corpus).
func NewGeo(ctx context.Context, tc model.TrainConfig, scale float64, out, corpus string, maxBytes int64, windows int) (*Geo, error) {
	if corpus == "" {
		d, err := data.DefaultCorpusDir()
		if err != nil {
			return nil, err
		}
		corpus = d
	}
	geo := sim.SkipPipeGeo()
	if err := geo.Validate(); err != nil {
		return nil, err
	}
	cl, err := coordinator.ScaleLinks(geo, scale, tc.Model, tc.MicrobatchSize)
	if err != nil {
		return nil, err
	}
	g := &Geo{Out: out, Corpus: corpus, MaxBytes: maxBytes, Train: tc, Cluster: cl}
	for _, n := range cl.Nodes {
		g.Nodes = append(g.Nodes, n.Name)
	}
	fmt.Fprintf(os.Stderr, "calibrating on %s (GPipe, 5 steps)...\n", cl.Name)
	calib, err := Run(ctx, g.Job("calibrate", planner.SkipPipeFull, 5, 0))
	if err != nil {
		return nil, fmt.Errorf("calibration run: %w", err)
	}
	if calib.CostModel == nil {
		return nil, fmt.Errorf("calibration run measured nothing")
	}
	g.Costs = calib.CostModel
	c, err := data.Load(corpus, data.Options{MaxBytes: maxBytes})
	if err != nil {
		return nil, err
	}
	if g.Val, err = data.EvalWindows(c.Val, windows, tc.Model.Ctx+1); err != nil {
		return nil, err
	}
	return g, nil
}

// Job is a run on the setting (planned with the calibrated costs once
// there are some), saving checkpoints every ckpt steps.
func (g *Geo) Job(name, schedule string, steps, ckpt int) Job {
	return Job{Name: name, Dir: g.Out, Schedule: schedule, Nodes: g.Nodes, Train: g.Train, Steps: steps, Cluster: g.Cluster,
		Costs: g.Costs, CheckpointEvery: ckpt, CorpusDir: g.Corpus, MaxCorpusBytes: g.MaxBytes}
}

// Curve is a validation loss curve.
type Curve struct {
	Steps, Loss []float64
	err         error
}

// TrackValidation makes j measure the validation loss of the whole model
// from its checkpoint every every steps (j must checkpoint that often).
// It chains j's OnStep, if any.
func (g *Geo) TrackValidation(j *Job, every int) *Curve {
	c := &Curve{}
	next := j.OnStep
	jj := *j
	j.OnStep = func(st coordinator.StepReport) {
		if next != nil {
			next(st)
		}
		if st.Step%int64(every) != 0 || c.err != nil {
			return
		}
		dir, err := jj.CheckpointDir(st.Step)
		if err == nil {
			var v float64
			if v, err = ValLoss(dir, g.Train.Model, g.Val); err == nil {
				c.Steps = append(c.Steps, float64(st.Step))
				c.Loss = append(c.Loss, v)
			}
		}
		if err != nil {
			c.err = fmt.Errorf("%s: validation at step %d: %w", jj.Name, st.Step, err)
		}
	}
	return c
}

// Err is the first validation failure, or an error when the run left no
// validation point.
func (c *Curve) Err() error {
	if c.err == nil && len(c.Loss) == 0 {
		return fmt.Errorf("no validation point")
	}
	return c.err
}
