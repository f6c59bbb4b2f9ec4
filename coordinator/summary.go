package coordinator

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"text/tabwriter"

	"go.yaml.in/yaml/v3"

	"stagecoach/costmodel"
	"stagecoach/timeline"
)

// Summary is what a finished run reports.
type Summary struct {
	Job            string  `json:"job"`
	Schedule       string  `json:"schedule"`
	Workers        int     `json:"workers"`
	Stages         int     `json:"stages"`
	Microbatches   int     `json:"microbatches"`
	MicrobatchSize int     `json:"microbatch_size"`
	Params         int64   `json:"params"`
	Epoch          int64   `json:"epoch"`
	LeaderRev      int64   `json:"leader_rev"`
	PlanPath       string  `json:"plan_path"`
	PlanSHA256     string  `json:"plan_sha256"`
	Checkpoint     string  `json:"checkpoint,omitempty"`
	ElapsedS       float64 `json:"elapsed_s"`

	FinalLoss  float64 `json:"final_loss"`
	TokensPerS float64 `json:"tokens_per_s"`
	// MeanIterationS is the mean wall time of a step at the coordinator.
	MeanIterationS float64 `json:"mean_iteration_s"`
	// MeanComputeS and MeanStepS are the mean RunIteration and Step
	// fan-out times; MeanCommitS the mean etcd commit.
	MeanComputeS float64 `json:"mean_compute_s"`
	MeanStepS    float64 `json:"mean_step_s"`
	MeanCommitS  float64 `json:"mean_commit_s"`
	// MeanControlS is the mean coordinator and control-plane time per step
	// (data, norm, RPC overheads, etcd commit); ControlFraction its share.
	MeanControlS    float64 `json:"mean_control_s"`
	ControlFraction float64 `json:"control_fraction"`
	// MeasuredSpanS is the median span of the workers' programs (first
	// action start to last action end) and MeasuredBubble the median idle
	// fraction over workers x span, over every step but the first
	// (warm-up) when there are several.
	MeasuredSpanS  float64 `json:"measured_span_s"`
	MeasuredBubble float64 `json:"measured_bubble"`
	// Simulated* come from Config.Simulator's run of the same plan against the cost model
	// calibrated from the measured action times (Calibration).
	SimulatedSpanS  float64            `json:"simulated_span_s,omitempty"`
	SimulatedBubble float64            `json:"simulated_bubble,omitempty"`
	Calibration     *costmodel.Cluster `json:"-"`
	// UnparsedTimings counts worker timings whose action the coordinator
	// could not read (left out of the trace).
	UnparsedTimings int `json:"unparsed_timings,omitempty"`
	// Recoveries lists the failures survived (recover.go), with their
	// detection-to-recovery times.
	Recoveries []Recovery `json:"recoveries,omitempty"`
	// Replans lists the plan changes made on cost drift (Config.ReplanDrift);
	// Epoch, Schedule and PlanPath then describe the last plan.
	Replans []Replan `json:"replans,omitempty"`
	// CostModel is the cost model calibrated from the last plan's steps
	// after warm-up (Config.ReplanWarmup): measured compute per stage
	// and node, the emulated links with the measured per-hop overhead.
	// Planning (Config.Costs) and `stagecoach sim --cluster` read it.
	CostModel *costmodel.Cluster `json:"-"`
	// Links are the per-link hop times measured over the last plan's
	// steps after warm-up, beside the emulated link's price.
	Links []LinkTime   `json:"links,omitempty"`
	Steps []StepReport `json:"steps"`

	// Measured is the last step as a timeline run (for the Chrome
	// trace); Simulated is the calibrated simulation of the plan.
	Measured  *timeline.Run `json:"-"`
	Simulated *timeline.Run `json:"-"`
	// SimError says why there is no simulation, if there is none.
	SimError string `json:"sim_error,omitempty"`

	sim timeline.Simulator // simulates the calibration, writes the trace
}

func (s *Summary) finish(m *measurements, simr timeline.Simulator) {
	s.sim = simr
	var it, ctl, comp, st, com float64
	var tokens int64
	for _, r := range s.Steps {
		it += r.IterationS
		ctl += r.ControlS
		comp += r.ComputeS
		st += r.StepS
		com += r.CommitS
		tokens = r.Tokens
	}
	if n := len(s.Steps); n > 0 {
		s.FinalLoss = s.Steps[n-1].Loss
		s.MeanIterationS = it / float64(n)
		s.MeanControlS = ctl / float64(n)
		s.MeanComputeS, s.MeanStepS, s.MeanCommitS = comp/float64(n), st/float64(n), com/float64(n)
		if it > 0 {
			s.TokensPerS = float64(tokens) / it
			s.ControlFraction = ctl / it
		}
	}
	if m == nil {
		return
	}
	s.UnparsedTimings = m.unparsed
	s.MeasuredSpanS = median(m.spans)
	s.MeasuredBubble = median(m.bubbles)
	p := m.plan
	if len(m.last) > 0 {
		s.Measured = &timeline.Run{Schedule: p.Schedule + " (measured)", Workers: len(p.Workers), Stages: len(p.Stages),
			Microbatches: len(p.Microbatches), Iterations: 1, IterationTimeS: m.lastSpan, MakespanS: m.lastSpan,
			Timeline: m.last, Plan: p}
	}
	if simr == nil {
		s.SimError = "no simulator given"
		return
	}
	c := m.cluster()
	if c == nil {
		s.SimError = "workers reported no forward timings"
		return
	}
	res, err := simr.Simulate(p, c, true)
	if err != nil {
		s.SimError = err.Error()
		return
	}
	res.Schedule = p.Schedule + " (simulated)"
	s.Calibration, s.Simulated = c, res
	s.SimulatedSpanS = res.MakespanS
	s.SimulatedBubble = res.BubbleFraction
}

// WriteJSON writes the summary as indented JSON to path.
func (s *Summary) WriteJSON(path string) error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	return writeAtomic(path, append(b, '\n'))
}

// WriteTrace writes the measured last step and, when there is one, its
// calibrated simulation as one Chrome trace (the simulator's format), so
// the two open side by side in Perfetto.
func (s *Summary) WriteTrace(path string) error {
	if s.Measured == nil {
		return fmt.Errorf("coordinator: no measured timeline to trace")
	}
	if s.sim == nil {
		return fmt.Errorf("coordinator: no simulator to write the trace with")
	}
	rs := []*timeline.Run{s.Measured}
	if s.Simulated != nil {
		rs = append(rs, s.Simulated)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := s.sim.WriteTrace(f, rs...); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// WriteCalibration writes the calibrated cost model as the cluster YAML
// `stagecoach sim --cluster` reads, checking that it parses back.
func (s *Summary) WriteCalibration(path string) error {
	if s.Calibration == nil {
		return fmt.Errorf("coordinator: no calibration (%s)", s.SimError)
	}
	b, err := yaml.Marshal(s.Calibration)
	if err != nil {
		return fmt.Errorf("coordinator: encode calibration: %w", err)
	}
	if _, err := costmodel.ParseCluster(b); err != nil {
		return fmt.Errorf("coordinator: calibration does not parse back: %w", err)
	}
	hdr := fmt.Sprintf("# Cost model calibrated by stagecoach from a %s run over %d workers\n# (measured forward per sample per stage and node speeds; links as emulated, or\n# free on plain loopback, plus the measured per-hop overhead).\n", s.Schedule, s.Workers)
	return writeAtomic(path, append([]byte(hdr), b...))
}

// WriteTable prints the summary table.
func (s *Summary) WriteTable(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	row := func(k, v string) { fmt.Fprintf(tw, "%s\t%s\n", k, v) }
	row("job", s.Job)
	row("schedule", fmt.Sprintf("%s: %d workers, %d stages, %d microbatches x %d", s.Schedule, s.Workers, s.Stages, s.Microbatches, s.MicrobatchSize))
	row("parameters", fmt.Sprint(s.Params))
	row("steps", fmt.Sprint(len(s.Steps)))
	row("final loss", fmt.Sprintf("%.4f", s.FinalLoss))
	row("tokens/s", fmt.Sprintf("%.0f", s.TokensPerS))
	row("iteration time", fmt.Sprintf("%.1f ms: programs %.1f ms, optimizer %.1f ms, control %.2f ms (%.1f%%, etcd commit %.2f ms)",
		s.MeanIterationS*1e3, s.MeanComputeS*1e3, s.MeanStepS*1e3, s.MeanControlS*1e3, 100*s.ControlFraction, s.MeanCommitS*1e3))
	if s.Simulated != nil {
		row("program span", fmt.Sprintf("measured %.1f ms, simulated %.1f ms (ratio %.2f)", s.MeasuredSpanS*1e3, s.SimulatedSpanS*1e3, ratio(s.SimulatedSpanS, s.MeasuredSpanS)))
		row("bubble", fmt.Sprintf("measured %.1f%%, simulated %.1f%%", 100*s.MeasuredBubble, 100*s.SimulatedBubble))
	} else {
		row("program span", fmt.Sprintf("measured %.1f ms", s.MeasuredSpanS*1e3))
		row("bubble", fmt.Sprintf("measured %.1f%% (no simulation: %s)", 100*s.MeasuredBubble, s.SimError))
	}
	return tw.Flush()
}

func ratio(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return a / b
}
