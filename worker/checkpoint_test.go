package worker_test

import (
	"context"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"

	"stagecoach/model"
	pb "stagecoach/proto"
	"stagecoach/worker"
	"stagecoach/worker/workertest"
)

// TestCheckpointResumeIsExact trains 4 steps straight, and 2 steps, a
// checkpoint, then 2 more steps on fresh workers restored from it: the
// weights and optimizer moments must be bit-identical.
func TestCheckpointResumeIsExact(t *testing.T) {
	su := setup{schedule: "1f1b", stages: 2, replicas: 1, mbs: 4, size: 2, layers: 4}
	ctx := context.Background()
	c, d, _ := distributed(t, su, 2, func(int, *workertest.Result, model.StepResult) {})
	checkpointParams(t, c, d, 2)
	win := func(step int) [][]int32 { return stepWindows(11, step, su.mbs, su.size, d.Train.Model.Ctx, 256) }
	for step := 3; step <= 4; step++ {
		if _, err := d.Iterate(ctx, int64(step), win(step)); err != nil {
			t.Fatal(err)
		}
	}
	straight := checkpointParams(t, c, d, 4)

	c2 := workertest.Start(t, len(d.Plan.Workers), testJob, nil)
	d2 := *d
	d2.Clients, d2.Peers = workertest.Dial(t, c2.Addrs), c2.Addrs
	if err := d2.Configure(ctx, nil); err != nil {
		t.Fatal(err)
	}
	for i, cl := range d2.Clients {
		dir := filepath.Join(c.Dirs[i], "ckpt")
		if _, err := cl.LoadCheckpoint(ctx, &pb.CheckpointRequest{Fence: d.Fence, Dir: dir, Step: 2}); err != nil {
			t.Fatal(err)
		}
		_, err := cl.Step(ctx, &pb.StepRequest{Fence: d.Fence, Iteration: 2, ClipScale: 1, Lr: 1e-3})
		wantCode(t, "step 2 after loading step 2", err, codes.AlreadyExists)
	}
	for step := 3; step <= 4; step++ {
		if _, err := d2.Iterate(ctx, int64(step), win(step)); err != nil {
			t.Fatal(err)
		}
	}
	resumed := checkpointParams(t, c2, &d2, 4)
	if len(resumed) != len(straight) {
		t.Fatalf("%d tensors after resume, %d straight", len(resumed), len(straight))
	}
	for name, want := range straight {
		for i, v := range resumed[name] {
			if math.Float32bits(v) != math.Float32bits(want[i]) {
				t.Fatalf("%s[%d]: resumed %v, straight %v", name, i, v, want[i])
			}
		}
	}
	entries, _ := os.ReadDir(worker.StepDir(filepath.Join(c.Dirs[0], "ckpt"), 4))
	for _, e := range entries {
		if strings.Contains(e.Name(), ".tmp") {
			t.Errorf("temporary file %s left in the checkpoint directory", e.Name())
		}
	}
}

func TestCorruptCheckpointChangesNothing(t *testing.T) {
	c, d := configured(t, nil)
	ctx := context.Background()
	if _, err := d.Iterate(ctx, 1, stepWindows(5, 1, 2, 2, d.Train.Model.Ctx, 256)); err != nil {
		t.Fatal(err)
	}
	before := checkpointParams(t, c, d, 1)
	path := filepath.Join(worker.StepDir(filepath.Join(c.Dirs[1], "ckpt"), 1), model.ShardFile(1))
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b[:len(b)/2], 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = d.Clients[1].LoadCheckpoint(ctx, &pb.CheckpointRequest{Fence: d.Fence, Dir: "ckpt", Step: 1})
	wantCode(t, "truncated checkpoint", err, codes.InvalidArgument)
	_, err = d.Clients[1].LoadCheckpoint(ctx, &pb.CheckpointRequest{Fence: d.Fence, Dir: "ckpt", Step: 5})
	wantCode(t, "missing checkpoint", err, codes.NotFound)
	after := checkpointParams(t, c, d, 1)
	for name, w := range before {
		for i := range w {
			if math.Float32bits(after[name][i]) != math.Float32bits(w[i]) {
				t.Fatalf("%s changed by a failed load", name)
			}
		}
	}
}
