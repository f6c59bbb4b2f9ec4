package coordinator

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"stagecoach/internal/atomicfile"
	"stagecoach/model"
	pb "stagecoach/proto"
	"stagecoach/scheduler"
	"stagecoach/worker"
)

// A checkpoint's shards hold the layer ranges of the plan that wrote it.
// A plan that splits the model otherwise (balanced stages, Config.Balance,
// planned anew after a failure, a rejoin or a restart) loads it through a
// cut: the coordinator checks the shards against their digests, opens
// them as one shard set (model.OpenCheckpoint: every tensor exactly
// once), writes the plan's stages from it under
// <checkpoint root>/resplit/epoch-E/step-N and has the workers load that,
// with its digests, as any checkpoint. The cut is removed once loaded.

// resplitDir is where cuts go, under the checkpoint root.
const resplitDir = "resplit"

// planLayers is each stage's layer count in p.
func planLayers(p *scheduler.Plan) []int {
	out := make([]int, len(p.Stages))
	for i, s := range p.Stages {
		out[i] = s.Layers
	}
	return out
}

// splitOf is the layers per stage a checkpoint of stages shards holds:
// layers, or the even split (model.Split) of a manifest that predates
// the record.
func splitOf(layers []int, stages, modelLayers int) []int {
	if len(layers) > 0 {
		return layers
	}
	specs, err := model.Split(modelLayers, stages, model.HeadLast)
	if err != nil {
		return nil
	}
	out := make([]int, len(specs))
	for i, s := range specs {
		out[i] = s.Hi - s.Lo
	}
	return out
}

// loadState has every worker load the state of step from the shards
// under base, written by a plan of layers per stage; when that split is
// not the current plan's, through a cut (above).
func (r *run) loadState(ctx context.Context, what, base string, step int64, shards []ShardDigest, layers []int) error {
	have := splitOf(layers, len(shards), r.cfg.Train.Model.Layers)
	if !slices.Equal(have, planLayers(r.plan)) {
		cut, err := r.resplit(worker.StepDir(base, step), step, shards)
		if err != nil {
			return fmt.Errorf("coordinator: %s %d: %w", what, step, err)
		}
		r.cfg.Logf("%s %d: layers per stage %v, the plan's %v: loading a cut of it", what, step, have, planLayers(r.plan))
		defer r.removeRetired([]string{filepath.Dir(cut.Dir)})
		base, shards = cut.Base, cut.Shards
	}
	pbs := shardsPB(shards)
	return r.fanOut(ctx, fmt.Sprintf("%s %d", what, step), func(ctx context.Context, w *workerConn) error {
		_, err := w.cli.LoadCheckpoint(ctx, &pb.CheckpointRequest{Fence: r.fence, Dir: base, Step: step, Shards: pbs})
		return err
	})
}

// resplit cuts the shard set of step in dir, checked against shards, into
// the current plan's stages. A shard that does not match its digest is
// reported as DataLoss, as a worker reports it, so that a restore falls
// back to an older checkpoint.
func (r *run) resplit(dir string, step int64, shards []ShardDigest) (*CheckpointManifest, error) {
	root := r.root()
	if _, err := root.Path(dir); err != nil {
		return nil, err
	}
	for _, d := range shards {
		path := filepath.Join(dir, model.ShardFile(d.Stage))
		if err := checkDigest(path, d); err != nil {
			return nil, err
		}
	}
	ck, err := model.OpenCheckpoint(dir)
	if err != nil {
		return nil, status.Errorf(codes.DataLoss, "%v", err)
	}
	if d := model.ConfigDiff(ck.Model, r.cfg.Train.Model); len(d) > 0 {
		return nil, fmt.Errorf("%s holds another model than the job's: %v", dir, d)
	}
	if int64(ck.Step) != step {
		return nil, status.Errorf(codes.DataLoss, "%s holds step %d, want %d", dir, ck.Step, step)
	}
	base := filepath.Join(r.cfg.CheckpointDir, resplitDir, fmt.Sprintf("epoch-%d", r.fence.Epoch))
	out, err := root.MkdirAll(worker.StepDir(base, step))
	if err != nil {
		return nil, err
	}
	meta := maps.Clone(ck.Meta)
	meta["resplit_from"] = dir
	m := &CheckpointManifest{Step: step, Epoch: r.fence.Epoch, Base: base, Dir: out, Layers: planLayers(r.plan)}
	if m.Shards, err = r.cutInto(ck, out, ck.Moments, meta); err != nil {
		return nil, fmt.Errorf("cut %s: %w", dir, err)
	}
	for _, d := range m.Shards {
		m.Files = append(m.Files, d.File)
	}
	return m, nil
}

// checkDigest checks the file at path against d (size and SHA-256).
func checkDigest(path string, d ShardDigest) error {
	f, err := os.Open(path)
	if os.IsNotExist(err) {
		return status.Errorf(codes.NotFound, "%v", err)
	}
	if err != nil {
		return err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, io.LimitReader(f, d.Size+1))
	if err != nil {
		return err
	}
	if n != d.Size || hex.EncodeToString(h.Sum(nil)) != d.SHA256 {
		return status.Errorf(codes.DataLoss, "%s: %d bytes with another SHA-256 than the %d bytes listed", path, n, d.Size)
	}
	return nil
}

// cutInto writes the current plan's stages of ck into dir (shard-<s>
// files), with moments when withOptim (else zero moments: a fresh
// optimizer's), each carrying meta plus its own stage and range, and
// returns their digests.
func (r *run) cutInto(ck *model.Checkpoint, dir string, withOptim bool, meta map[string]string) ([]ShardDigest, error) {
	shapes := map[string][]int{}
	for _, e := range model.ModelShapes(r.cfg.Train.Model) {
		shapes[e.Name] = e.Shape
	}
	var out []ShardDigest
	for s, ps := range r.plan.Stages {
		spec := model.ShardSpec{Lo: ps.FirstLayer, Hi: ps.FirstLayer + ps.Layers, Embed: s == 0, Head: s == r.plan.HeadStage}
		var states []model.ParamState
		for _, n := range model.SpecTensorNames(r.cfg.Train.Model, spec) {
			size := 1
			for _, d := range shapes[n] {
				size *= d
			}
			states = append(states, model.ParamState{T: &model.Tensor{Name: n, Shape: shapes[n], W: make([]float32, size)},
				M: make([]float32, size), V: make([]float32, size)})
		}
		if err := ck.Fill(states, withOptim); err != nil {
			return nil, fmt.Errorf("stage %d: %w", s, err)
		}
		m := maps.Clone(meta)
		m["stage"], m["first_layer"], m["layers"] = strconv.Itoa(s), strconv.Itoa(spec.Lo), strconv.Itoa(spec.Hi-spec.Lo)
		var buf bytes.Buffer
		if err := model.WriteStates(&buf, states, m); err != nil {
			return nil, err
		}
		path := filepath.Join(dir, model.ShardFile(s))
		if err := atomicfile.Write(path, buf.Bytes(), atomicfile.Options{}); err != nil {
			return nil, fmt.Errorf("stage %d: %w", s, err)
		}
		d := model.DigestOf(buf.Bytes())
		out = append(out, ShardDigest{Stage: s, File: path, Size: d.Size, SHA256: d.Hex()})
	}
	if err := atomicfile.SyncDir(dir); err != nil {
		return nil, err
	}
	return out, nil
}

// resplitState is the state of a step saved under the plan being
// replaced, for a plan of other layer ranges.
type resplitState struct {
	base   string
	step   int64
	shards []ShardDigest
	layers []int
}

// saveForResplit saves every stage's state after step under the current
// plan when next splits the layers otherwise (nil when it does not), in
// the current epoch's hand-off directory.
func (r *run) saveForResplit(ctx context.Context, next *scheduler.Plan, step int64) (*resplitState, error) {
	if slices.Equal(planLayers(next), planLayers(r.plan)) {
		return nil, nil
	}
	base := filepath.Join(r.handoffDir(), resplitDir)
	shards, err := r.saveShards(ctx, "SaveCheckpoint (re-split)", base, step)
	if err != nil {
		return nil, err
	}
	r.cfg.Logf("after step %d: layers per stage %v -> %v: the stages' state moves through a checkpoint", step, planLayers(r.plan), planLayers(next))
	return &resplitState{base: base, step: step, shards: shards, layers: planLayers(r.plan)}, nil
}

// loadResplit has the workers, configured with the new plan, load the
// state saveForResplit saved (cut to the new ranges), then removes it.
func (r *run) loadResplit(ctx context.Context, s *resplitState) error {
	if s == nil {
		return nil
	}
	defer r.removeRetired([]string{s.base})
	return r.loadState(ctx, "LoadCheckpoint (re-split)", s.base, s.step, s.shards, s.layers)
}
