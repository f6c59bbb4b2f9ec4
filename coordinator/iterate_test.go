package coordinator

import (
	"math"
	"testing"

	"stagecoach/model"
	pb "stagecoach/proto"
	"stagecoach/scheduler"
)

func testRun(t *testing.T) *run {
	t.Helper()
	p, err := scheduler.Generate("gpipe", scheduler.Spec{Stages: 2, Microbatches: 3})
	if err != nil {
		t.Fatal(err)
	}
	return &run{plan: p}
}

func TestMeanLossRejectsBadReports(t *testing.T) {
	r := testRun(t) // loss worker of every microbatch: worker 1
	good := []*pb.RunIterationResponse{{}, {Losses: map[int32]float64{0: 1, 1: 2, 2: 4}}}
	if l, err := r.meanLoss(good); err != nil || l != 7.0/3 {
		t.Fatalf("meanLoss = %v, %v", l, err)
	}
	for name, resps := range map[string][]*pb.RunIterationResponse{
		"missing":      {{}, {Losses: map[int32]float64{0: 1, 2: 4}}},
		"out of range": {{}, {Losses: map[int32]float64{0: 1, 1: 2, 2: 4, 3: 1}}},
		"negative":     {{}, {Losses: map[int32]float64{0: 1, 1: 2, 2: 4, -1: 1}}},
		"wrong worker": {{Losses: map[int32]float64{0: 1}}, {Losses: map[int32]float64{0: 1, 1: 2, 2: 4}}},
	} {
		if _, err := r.meanLoss(resps); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// The per-tensor sums must be added in canonical index order, whatever
// worker reports which tensor, to match model.GlobalGradNorm bit for bit.
func TestGradNormMatchesModelOrder(t *testing.T) {
	r := testRun(t)
	vals := []float64{1e-8, 3.3, 1e8, 2.2e-3, 7}
	var ts []*model.Tensor
	w0, w1 := map[int32]float64{}, map[int32]float64{}
	for i, v := range vals {
		g := float32(math.Sqrt(v))
		ts = append(ts, &model.Tensor{Index: i, G: []float32{g}})
		s := model.SumSquares(ts[i])
		if i%2 == 0 {
			w1[int32(i)] = s
		} else {
			w0[int32(i)] = s
		}
	}
	got, err := r.gradNorm([]*pb.RunIterationResponse{{TensorSumSquares: w0}, {TensorSumSquares: w1}})
	if err != nil {
		t.Fatal(err)
	}
	if want := model.GlobalGradNorm(ts); math.Float64bits(got) != math.Float64bits(want) {
		t.Fatalf("norm %v, model says %v", got, want)
	}
	dup := []*pb.RunIterationResponse{{TensorSumSquares: map[int32]float64{1: 1}}, {TensorSumSquares: map[int32]float64{1: 1}}}
	if _, err := r.gradNorm(dup); err == nil {
		t.Error("a tensor reported twice was accepted")
	}
}

func TestParseAction(t *testing.T) {
	for _, a := range []scheduler.Action{scheduler.F(3, 1), scheduler.B(0, 0), scheduler.L(2, 1), scheduler.R(4), scheduler.Step(), scheduler.W(1, 2)} {
		got, err := parseAction(a.String())
		if err != nil || got != a {
			t.Errorf("parseAction(%q) = %v, %v", a.String(), got, err)
		}
	}
	for _, bad := range []string{"", "X1", "F-1@s0", "F1@sx", "F1@s-2"} {
		if _, err := parseAction(bad); err == nil {
			t.Errorf("parseAction(%q) accepted", bad)
		}
	}
}
