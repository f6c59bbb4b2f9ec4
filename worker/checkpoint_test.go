package worker_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

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
	digests := saveShards(t, d, "ckpt", 2)
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
		// Fresh workers have their own roots: the files are the old ones'.
		if _, err := cl.LoadCheckpoint(ctx, &pb.CheckpointRequest{Fence: d.Fence, Dir: dir, Step: 2, Shards: digests[i]}); status.Code(err) != codes.PermissionDenied {
			t.Fatalf("load from another worker's root: %v, want PermissionDenied", err)
		}
		if err := copyDir(worker.StepDir(dir, 2), worker.StepDir(filepath.Join(c2.Dirs[i], "ckpt"), 2)); err != nil {
			t.Fatal(err)
		}
		if _, err := cl.LoadCheckpoint(ctx, &pb.CheckpointRequest{Fence: d.Fence, Dir: "ckpt", Step: 2}); status.Code(err) != codes.InvalidArgument {
			t.Fatalf("load without digests: %v, want InvalidArgument", err)
		}
		if _, err := cl.LoadCheckpoint(ctx, &pb.CheckpointRequest{Fence: d.Fence, Dir: "ckpt", Step: 2, Shards: digests[i]}); err != nil {
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

// saveShards saves every worker's shards under dir and returns the digests
// each reports, by worker.
func saveShards(t *testing.T, d *workertest.Driver, dir string, step int64) [][]*pb.ShardDigest {
	t.Helper()
	out := make([][]*pb.ShardDigest, len(d.Clients))
	for i, cl := range d.Clients {
		r, err := cl.SaveCheckpoint(context.Background(), &pb.CheckpointRequest{Fence: d.Fence, Dir: dir, Step: step})
		if err != nil {
			t.Fatalf("worker %d: save: %v", i, err)
		}
		if len(r.GetShards()) != len(r.GetFiles()) || len(r.GetShards()) == 0 {
			t.Fatalf("worker %d: %d digests for %d files", i, len(r.GetShards()), len(r.GetFiles()))
		}
		for _, sd := range r.GetShards() {
			b, err := os.ReadFile(sd.GetFile())
			if err != nil {
				t.Fatal(err)
			}
			if sum := sha256.Sum256(b); int64(len(b)) != sd.GetSize() || !bytes.Equal(sum[:], sd.GetSha256()) {
				t.Fatalf("worker %d: %s is %d bytes with SHA-256 %x, reported %d and %x", i, sd.GetFile(), len(b), sum, sd.GetSize(), sd.GetSha256())
			}
		}
		out[i] = r.GetShards()
	}
	return out
}

func copyDir(from, to string) error {
	if err := os.MkdirAll(to, 0o755); err != nil {
		return err
	}
	es, err := os.ReadDir(from)
	if err != nil {
		return err
	}
	for _, e := range es {
		b, err := os.ReadFile(filepath.Join(from, e.Name()))
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(to, e.Name()), b, 0o644); err != nil {
			return err
		}
	}
	return nil
}

// TestCorruptCheckpointChangesNothing damages worker 1's shard in several
// ways: each load is refused with DataLoss (the file does not match its
// listed size and SHA-256) before anything is parsed, and the worker's
// parameters stay as they were.
func TestCorruptCheckpointChangesNothing(t *testing.T) {
	c, d := configured(t, nil)
	ctx := context.Background()
	if _, err := d.Iterate(ctx, 1, stepWindows(5, 1, 2, 2, d.Train.Model.Ctx, 256)); err != nil {
		t.Fatal(err)
	}
	digests := saveShards(t, d, "ckpt", 1)
	before := checkpointParams(t, c, d, 1)
	path := filepath.Join(worker.StepDir(filepath.Join(c.Dirs[1], "ckpt"), 1), model.ShardFile(1))
	good, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	flip := func(b []byte) []byte {
		// 64 bits in the last float32 values (the tensor data).
		for i := 0; i < 64; i++ {
			b[len(b)-1-4*i] ^= 0x40
		}
		return b
	}
	header := func(b []byte) []byte {
		copy(b[8:], "{\"x\":")
		return b
	}
	for _, tt := range []struct {
		name string
		edit func([]byte) []byte
	}{
		{"truncated", func(b []byte) []byte { return b[:len(b)/2] }},
		{"64 bits flipped", flip},
		{"corrupt header", header},
		{"one byte longer", func(b []byte) []byte { return append(b, 0) }},
	} {
		if err := os.WriteFile(path, tt.edit(append([]byte(nil), good...)), 0o644); err != nil {
			t.Fatal(err)
		}
		_, err = d.Clients[1].LoadCheckpoint(ctx, &pb.CheckpointRequest{Fence: d.Fence, Dir: "ckpt", Step: 1, Shards: digests[1]})
		wantCode(t, tt.name+" checkpoint", err, codes.DataLoss)
	}
	// A file that matches its digest but is no checkpoint still fails
	// as DataLoss, not as a crash.
	junk := []byte("not a safetensors file at all")
	if err := os.WriteFile(path, junk, 0o644); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(junk)
	_, err = d.Clients[1].LoadCheckpoint(ctx, &pb.CheckpointRequest{Fence: d.Fence, Dir: "ckpt", Step: 1,
		Shards: []*pb.ShardDigest{{Stage: 1, Size: int64(len(junk)), Sha256: sum[:]}}})
	wantCode(t, "matching junk", err, codes.DataLoss)
	_, err = d.Clients[1].LoadCheckpoint(ctx, &pb.CheckpointRequest{Fence: d.Fence, Dir: "ckpt", Step: 1,
		Shards: []*pb.ShardDigest{{Stage: 1, Size: 1 << 40, Sha256: sum[:]}}})
	wantCode(t, "a listed size beyond the shard's bound", err, codes.DataLoss)
	_, err = d.Clients[1].LoadCheckpoint(ctx, &pb.CheckpointRequest{Fence: d.Fence, Dir: "ckpt", Step: 5, Shards: digests[1]})
	wantCode(t, "missing checkpoint", err, codes.NotFound)
	after := checkpointParams(t, c, d, 1)
	for name, w := range before {
		for i := range w {
			if math.Float32bits(after[name][i]) != math.Float32bits(w[i]) {
				t.Fatalf("%s changed by a failed load", name)
			}
		}
	}
	// The intact file loads again.
	if err := os.WriteFile(path, good, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Clients[1].LoadCheckpoint(ctx, &pb.CheckpointRequest{Fence: d.Fence, Dir: "ckpt", Step: 1, Shards: digests[1]}); err != nil {
		t.Fatal(err)
	}
}

// TestCheckpointDirConfinedToRoot asks a worker to save and load outside
// its checkpoint root: an absolute directory elsewhere, a ".." path and a
// symlink inside the root that leads out. Each is PermissionDenied and
// nothing is written outside.
func TestCheckpointDirConfinedToRoot(t *testing.T) {
	root := t.TempDir()
	c, d := configured(t, func(_ int, cfg *worker.Config) { cfg.CheckpointRoot = root })
	ctx := context.Background()
	if _, err := d.Iterate(ctx, 1, stepWindows(5, 1, 2, 2, d.Train.Model.Ctx, 256)); err != nil {
		t.Fatal(err)
	}
	outside := t.TempDir()
	if err := os.Symlink(outside, filepath.Join(root, "escape")); err != nil {
		t.Fatal(err)
	}
	for _, dir := range []string{outside, filepath.Join(root, "..", filepath.Base(outside)), "../x", "escape", "escape/deeper", c.Dirs[0]} {
		_, err := d.Clients[0].SaveCheckpoint(ctx, &pb.CheckpointRequest{Fence: d.Fence, Dir: dir, Step: 1})
		wantCode(t, "save into "+dir, err, codes.PermissionDenied)
		if err != nil && !strings.Contains(err.Error(), "outside the worker's checkpoint root") {
			t.Errorf("save into %s: %v does not say why", dir, err)
		}
		_, err = d.Clients[0].LoadCheckpoint(ctx, &pb.CheckpointRequest{Fence: d.Fence, Dir: dir, Step: 1})
		wantCode(t, "load from "+dir, err, codes.PermissionDenied)
	}
	if es, _ := os.ReadDir(outside); len(es) != 0 {
		t.Errorf("the refused saves wrote %d entries outside the root, e.g. %s", len(es), es[0].Name())
	}
	// Inside the root, absolute or relative, both work.
	for _, dir := range []string{filepath.Join(root, "abs"), "rel"} {
		r, err := d.Clients[0].SaveCheckpoint(ctx, &pb.CheckpointRequest{Fence: d.Fence, Dir: dir, Step: 1})
		if err != nil {
			t.Fatalf("save into %s: %v", dir, err)
		}
		if _, err := d.Clients[0].LoadCheckpoint(ctx, &pb.CheckpointRequest{Fence: d.Fence, Dir: dir, Step: 1, Shards: r.GetShards()}); err != nil {
			t.Fatalf("load from %s: %v", dir, err)
		}
	}
}
