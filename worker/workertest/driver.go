package workertest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"sort"
	"sync"

	"stagecoach/model"
	pb "stagecoach/proto"
	"stagecoach/scheduler"
)

// Driver drives workers the way a coordinator must for exact results.
type Driver struct {
	Clients []pb.WorkerClient
	Peers   []string
	// Names are the workers' names by plan index (Configure's
	// peer_names); required when the workers serve mutual TLS.
	Names []string
	Fence *pb.Fence
	Plan  *scheduler.Plan
	Train model.TrainConfig
}

// Result is one finished iteration.
type Result struct {
	// Loss is the mean microbatch loss, summed in ascending microbatch
	// order (model.Trainer's StepResult.Loss).
	Loss     float64
	Losses   map[int]float64
	GradNorm float64
	Clip     float32
	LR       float64
	Runs     []*pb.RunIterationResponse
}

// Configure sends the plan and model to every worker (worker i of the plan
// is Clients[i]).
func (d *Driver) Configure(ctx context.Context, shapingYAML []byte) error {
	var pj bytes.Buffer
	if err := scheduler.Encode(&pj, d.Plan); err != nil {
		return err
	}
	mj, err := json.Marshal(d.Train)
	if err != nil {
		return err
	}
	return d.all(func(i int) error {
		_, err := d.Clients[i].Configure(ctx, &pb.ConfigureRequest{Fence: d.Fence, PlanJson: pj.Bytes(), Worker: int32(i),
			Peers: d.Peers, ModelJson: mj, LinkShapingYaml: shapingYAML, PeerNames: d.Names})
		return err
	})
}

// Iterate runs iteration it (1-based) on every worker with the given
// microbatch windows (windows[mb] holds Samples windows of Ctx+1 tokens),
// then steps every worker with the trainer's clip factor and learning
// rate.
func (d *Driver) Iterate(ctx context.Context, it int64, windows [][]int32) (*Result, error) {
	var data []*pb.MicrobatchData
	for mb, w := range windows {
		data = append(data, &pb.MicrobatchData{Microbatch: int32(mb), Batch: int32(d.Plan.Microbatches[mb].Samples),
			Ctx: int32(d.Train.Model.Ctx), Tokens: w})
	}
	res := &Result{Losses: map[int]float64{}, Runs: make([]*pb.RunIterationResponse, len(d.Clients))}
	err := d.all(func(i int) error {
		r, err := d.Clients[i].RunIteration(ctx, &pb.RunIterationRequest{Fence: d.Fence, Iteration: it, Data: data})
		res.Runs[i] = r
		return err
	})
	if err != nil {
		return nil, err
	}
	// Per-tensor squares summed in canonical order: model.GlobalGradNorm.
	ss := map[int32]float64{}
	for _, r := range res.Runs {
		for k, v := range r.GetTensorSumSquares() {
			if _, dup := ss[k]; dup {
				return nil, fmt.Errorf("tensor %d reported twice", k)
			}
			ss[k] = v
		}
		for mb, l := range r.GetLosses() {
			res.Losses[int(mb)] = l
		}
	}
	keys := make([]int, 0, len(ss))
	for k := range ss {
		keys = append(keys, int(k))
	}
	sort.Ints(keys)
	var sum float64
	for _, k := range keys {
		sum += ss[int32(k)]
	}
	res.GradNorm = math.Sqrt(sum)
	for mb := range len(d.Plan.Microbatches) {
		res.Loss += res.Losses[mb]
	}
	res.Loss /= float64(len(d.Plan.Microbatches))
	res.Clip = model.ClipFactor(res.GradNorm, d.Train.Optim.ClipNorm)
	res.LR = d.Train.Optim.LRAt(int(it))
	err = d.all(func(i int) error {
		_, err := d.Clients[i].Step(ctx, &pb.StepRequest{Fence: d.Fence, Iteration: it, ClipScale: float64(res.Clip), Lr: res.LR})
		return err
	})
	return res, err
}

// all runs f for every worker in parallel and returns the first error.
func (d *Driver) all(f func(i int) error) error {
	errs := make([]error, len(d.Clients))
	var wg sync.WaitGroup
	for i := range d.Clients {
		wg.Add(1)
		go func() { defer wg.Done(); errs[i] = f(i) }()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			return fmt.Errorf("worker %d: %w", i, err)
		}
	}
	return nil
}
