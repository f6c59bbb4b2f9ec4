package worker

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"

	"stagecoach/compute"
	"stagecoach/internal/atomicfile"
	"stagecoach/internal/confine"
	"stagecoach/internal/failpoint"
	"stagecoach/model"
	pb "stagecoach/proto"
)

// Checkpoints: one directory per step, <dir>/step-<8 digits>/, holding one
// model-format safetensors file per stage (model.ShardFile(stage)) with
// the stage's parameters and optimizer moments. Replicas of a stage write
// identical bytes (their state is bit-identical after all-reduce), so
// sharing a directory is harmless. Every file is written under a unique
// temporary name, synced and renamed: a crash never leaves a half-written
// file under the final name.
//
// Every directory lies under the worker's checkpoint root
// (Config.CheckpointRoot), checked lexically and through symlinks, so
// whoever can call the worker cannot make it write or read elsewhere.
// SaveCheckpoint returns each file's size and SHA-256; LoadCheckpoint
// loads a stage only from a file with the size and SHA-256 the request
// lists for it, read through the hash before anything is parsed (a
// mismatch or a file that does not parse is ErrCorruptCheckpoint, so the
// coordinator can fall back to an older checkpoint).

// Metadata keys added to the model's.
const (
	metaStage      = "stage"
	metaFirstLayer = "first_layer"
	metaLayers     = "layers"
	metaJob        = "job"
)

// StepDir is the checkpoint directory of step under dir.
func StepDir(dir string, step int64) string {
	return filepath.Join(dir, fmt.Sprintf("step-%08d", step))
}

// stepDir is step's checkpoint directory under dir, confined to the
// checkpoint root: dir empty means "checkpoints", a relative dir
// resolves under the root.
func (s *Server) stepDir(dir string, step int64) (string, error) {
	if dir == "" {
		dir = "checkpoints"
	}
	p, err := s.root.Path(StepDir(dir, step))
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrOutsideRoot, err)
	}
	return p, nil
}

// SaveCheckpoint implements pb.WorkerServer. step must be the last applied
// step (0 means "the last applied step").
func (s *Server) SaveCheckpoint(ctx context.Context, req *pb.CheckpointRequest) (*pb.CheckpointResponse, error) {
	resp, err := s.save(ctx, req)
	if err != nil {
		s.cfg.Logf("worker %s: save checkpoint: %v", s.cfg.Name, err)
	}
	s.noteBackend(err)
	return resp, toStatus(err)
}

func (s *Server) save(ctx context.Context, req *pb.CheckpointRequest) (*pb.CheckpointResponse, error) {
	s.control.Lock()
	defer s.control.Unlock()
	j, err := s.admit(ctx, req.GetFence())
	if err != nil {
		return nil, err
	}
	step := req.GetStep()
	applied := s.appliedStep()
	if step == 0 {
		step = applied
	}
	if step != applied {
		return nil, fmt.Errorf("%w: checkpoint of step %d asked, the worker holds step %d", ErrOutOfOrder, step, applied)
	}
	dir, err := s.stepDir(req.GetDir(), step)
	if err != nil {
		return nil, err
	}
	if dir, err = s.root.MkdirAll(dir); err != nil {
		if errors.Is(err, confine.ErrOutside) {
			err = fmt.Errorf("%w: %w", ErrOutsideRoot, err)
		}
		return nil, err
	}
	mc, _ := json.Marshal(j.train.Model)
	tc, _ := json.Marshal(j.train)
	resp := &pb.CheckpointResponse{}
	for _, st := range j.stages {
		meta := map[string]string{
			model.MetaFormat: model.FormatV1, model.MetaModelConfig: string(mc), model.MetaTrainConfig: string(tc),
			model.MetaStep: strconv.FormatInt(step, 10), metaStage: strconv.Itoa(st.id), metaJob: s.cfg.Job,
			metaFirstLayer: strconv.Itoa(st.spec.Lo), metaLayers: strconv.Itoa(st.spec.Hi - st.spec.Lo),
		}
		path := filepath.Join(dir, model.ShardFile(st.id))
		states, err := st.cs.State()
		if err != nil {
			return nil, st.fail("state", err)
		}
		ms, err := fileStates(st, states)
		if err != nil {
			return nil, st.fail("state", err)
		}
		d, err := writeStates(path, ms, meta, step)
		if err != nil {
			return nil, fmt.Errorf("stage %d: %w", st.id, err)
		}
		resp.Files = append(resp.Files, path)
		resp.Shards = append(resp.Shards, &pb.ShardDigest{Stage: int32(st.id), File: path, Size: d.Size, Sha256: d.SHA256[:]})
	}
	if err := atomicfile.SyncDir(dir); err != nil {
		return nil, err
	}
	return resp, nil
}

// fileStates converts a stage's state to the checkpoint format's
// (model.ParamState, sharing the slices), checking it is the state of the
// parameters the stage described: an answer that is not is the backend's
// failure, and must never reach a checkpoint.
func fileStates(st *stage, states []compute.ParamState) ([]model.ParamState, error) {
	if len(states) != len(st.desc.Params) {
		return nil, fmt.Errorf("%w: %d tensors, the stage has %d", compute.ErrBackend, len(states), len(st.desc.Params))
	}
	out := make([]model.ParamState, len(states))
	for i, ps := range states {
		p := st.desc.Params[i]
		n := p.Elems()
		if ps.Name != p.Name || len(ps.W) != n || (len(ps.M) != n && len(ps.M) != 0) || len(ps.V) != len(ps.M) {
			return nil, fmt.Errorf("%w: state tensor %d is %q with %d/%d/%d elements (weights/moments), the stage's is %q of %d",
				compute.ErrBackend, i, ps.Name, len(ps.W), len(ps.M), len(ps.V), p.Name, n)
		}
		t := &model.Tensor{Name: p.Name, Index: p.Index, Shape: p.Shape, W: ps.W, Decay: p.Decay}
		out[i] = model.ParamState{T: t, M: ps.M, V: ps.V}
		if len(ps.M) == 0 {
			out[i].M, out[i].V = nil, nil // no moments: the format writes none
		}
	}
	return out, nil
}

// writeStates encodes a shard, writes it atomically and returns its
// digest. The checkpoint-write failpoint (for fault tests) kills the
// process after half the bytes of step's shard reached the temporary
// file.
func writeStates(path string, states []model.ParamState, meta map[string]string, step int64) (model.Digest, error) {
	var buf bytes.Buffer
	if err := model.WriteStates(&buf, states, meta); err != nil {
		return model.Digest{}, err
	}
	var opt atomicfile.Options
	if v, ok := failpoint.Value(failpoint.CheckpointWrite); ok && v == strconv.FormatInt(step, 10) {
		opt.BeforeWrite = func(f *os.File, b []byte) {
			_, _ = f.Write(b[:len(b)/2])
			_ = f.Sync()
			failpoint.Crash()
		}
	}
	return model.DigestOf(buf.Bytes()), atomicfile.Write(path, buf.Bytes(), opt)
}

// LoadCheckpoint implements pb.WorkerServer: it restores every held stage
// from step's directory and sets the applied step to it. Either all stages
// load or none changes.
func (s *Server) LoadCheckpoint(ctx context.Context, req *pb.CheckpointRequest) (*pb.CheckpointResponse, error) {
	resp, err := s.load(ctx, req)
	if err != nil {
		s.cfg.Logf("worker %s: load checkpoint: %v", s.cfg.Name, err)
	}
	s.noteBackend(err)
	return resp, toStatus(err)
}

func (s *Server) load(ctx context.Context, req *pb.CheckpointRequest) (*pb.CheckpointResponse, error) {
	s.control.Lock()
	defer s.control.Unlock()
	j, err := s.admit(ctx, req.GetFence())
	if err != nil {
		return nil, err
	}
	step := req.GetStep()
	// Step 0 is a state before any step: a job started from another's
	// weights with fresh optimizer moments.
	if step < 0 {
		return nil, fmt.Errorf("%w: checkpoint step %d", ErrBadInput, step)
	}
	dir, err := s.stepDir(req.GetDir(), step)
	if err != nil {
		return nil, err
	}
	want := map[int]model.Digest{}
	for _, d := range req.GetShards() {
		dg, err := model.ParseDigest(d.GetSize(), d.GetSha256())
		if err != nil {
			return nil, fmt.Errorf("%w: stage %d's digest: %v", ErrBadInput, d.GetStage(), err)
		}
		want[int(d.GetStage())] = dg
	}
	staged := make([][]model.ParamState, len(j.stages))
	resp := &pb.CheckpointResponse{}
	for i, st := range j.stages {
		// Load into buffers of our own first so a bad file changes
		// nothing: weights and both moments of every parameter (the
		// worker's checkpoints always carry the moments).
		for _, p := range st.desc.Params {
			n := p.Elems()
			t := &model.Tensor{Name: p.Name, Index: p.Index, Shape: p.Shape, W: make([]float32, n), Decay: p.Decay}
			staged[i] = append(staged[i], model.ParamState{T: t, M: make([]float32, n), V: make([]float32, n)})
		}
		path := filepath.Join(dir, model.ShardFile(st.id))
		d, ok := want[st.id]
		if !ok {
			return nil, fmt.Errorf("%w: no size and SHA-256 given for stage %d's shard %s", ErrBadInput, st.id, path)
		}
		meta, err := s.loadShard(path, d, staged[i])
		if err != nil {
			return nil, fmt.Errorf("stage %d: %w", st.id, err)
		}
		if meta[model.MetaFormat] != model.FormatV1 || meta[model.MetaStep] != strconv.FormatInt(step, 10) {
			return nil, fmt.Errorf("%w: %s: format %q step %q, want %q step %d", ErrCorruptCheckpoint, path, meta[model.MetaFormat], meta[model.MetaStep], model.FormatV1, step)
		}
		resp.Files = append(resp.Files, path)
	}
	// Every file is good. Only the backend can fail from here; if it
	// does, the stages disagree and the worker is not to be used until a
	// load succeeds (the applied step is not changed, and no gradients
	// are ready).
	j.ready = 0
	for i, st := range j.stages {
		states := make([]compute.ParamState, len(staged[i]))
		for k, ps := range staged[i] {
			states[k] = compute.ParamState{ParamInfo: st.desc.Params[k], W: ps.T.W, M: ps.M, V: ps.V}
		}
		if err := st.cs.SetState(states); err != nil {
			return nil, st.fail("set state", err)
		}
		// Gradients of the past do not apply to the loaded weights.
		if err := st.cs.ZeroGrad(); err != nil {
			return nil, st.fail("zero gradients", err)
		}
	}
	s.setApplied(step)
	return resp, nil
}

// loadShard fills states from the shard file at path once its bytes match
// d (model.ReadVerified, bounded by what states can hold).
func (s *Server) loadShard(path string, d model.Digest, states []model.ParamState) (map[string]string, error) {
	f, err := s.root.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: %v", ErrNoCheckpoint, err)
	}
	if errors.Is(err, confine.ErrOutside) {
		return nil, fmt.Errorf("%w: %w", ErrOutsideRoot, err)
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := model.ReadVerified(f, path, d, model.ShardLimit(states))
	if err == nil {
		var ts []model.STensor
		var meta map[string]string
		if ts, meta, err = model.ParseVerified(b, path); err == nil {
			if err = model.FillStates(path, ts, states, true); err == nil {
				return meta, nil
			}
			err = fmt.Errorf("%w: %w", ErrCorruptCheckpoint, err)
		}
	}
	return nil, err
}
