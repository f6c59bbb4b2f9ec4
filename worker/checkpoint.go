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

	"stagecoach/internal/atomicfile"
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

func (s *Server) checkpointDir(dir string) string {
	if dir == "" {
		return filepath.Join(s.cfg.DataDir, "checkpoints")
	}
	if filepath.IsAbs(dir) {
		return dir
	}
	return filepath.Join(s.cfg.DataDir, dir)
}

// SaveCheckpoint implements pb.WorkerServer. step must be the last applied
// step (0 means "the last applied step").
func (s *Server) SaveCheckpoint(ctx context.Context, req *pb.CheckpointRequest) (*pb.CheckpointResponse, error) {
	resp, err := s.save(ctx, req)
	if err != nil {
		s.cfg.Logf("worker %s: save checkpoint: %v", s.cfg.Name, err)
	}
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
	dir := StepDir(s.checkpointDir(req.GetDir()), step)
	if err := os.MkdirAll(dir, 0o755); err != nil {
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
		if err := writeStates(path, st.opt.States, meta, step); err != nil {
			return nil, fmt.Errorf("stage %d: %w", st.id, err)
		}
		resp.Files = append(resp.Files, path)
	}
	if err := atomicfile.SyncDir(dir); err != nil {
		return nil, err
	}
	return resp, nil
}

// writeStates encodes a shard and writes it atomically. The
// checkpoint-write failpoint (for fault tests) kills the process after
// half the bytes of step's shard reached the temporary file.
func writeStates(path string, states []model.ParamState, meta map[string]string, step int64) error {
	var buf bytes.Buffer
	if err := model.WriteStates(&buf, states, meta); err != nil {
		return err
	}
	var opt atomicfile.Options
	if v, ok := failpoint.Value(failpoint.CheckpointWrite); ok && v == strconv.FormatInt(step, 10) {
		opt.BeforeWrite = func(f *os.File, b []byte) {
			_, _ = f.Write(b[:len(b)/2])
			_ = f.Sync()
			failpoint.Crash()
		}
	}
	return atomicfile.Write(path, buf.Bytes(), opt)
}

// LoadCheckpoint implements pb.WorkerServer: it restores every held stage
// from step's directory and sets the applied step to it. Either all stages
// load or none changes.
func (s *Server) LoadCheckpoint(ctx context.Context, req *pb.CheckpointRequest) (*pb.CheckpointResponse, error) {
	resp, err := s.load(ctx, req)
	if err != nil {
		s.cfg.Logf("worker %s: load checkpoint: %v", s.cfg.Name, err)
	}
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
	if step < 1 {
		return nil, fmt.Errorf("%w: checkpoint step %d", ErrBadInput, step)
	}
	dir := StepDir(s.checkpointDir(req.GetDir()), step)
	staged := make([][]model.ParamState, len(j.stages))
	resp := &pb.CheckpointResponse{}
	for i, st := range j.stages {
		// Load into copies first so a bad file changes nothing.
		for _, ps := range st.opt.States {
			t := *ps.T
			t.W = make([]float32, len(ps.T.W))
			staged[i] = append(staged[i], model.ParamState{T: &t, M: make([]float32, len(ps.M)), V: make([]float32, len(ps.V))})
		}
		path := filepath.Join(dir, model.ShardFile(st.id))
		meta, err := model.LoadStates(path, staged[i], true)
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%w: %v", ErrNoCheckpoint, err)
		}
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrBadInput, err)
		}
		if meta[model.MetaFormat] != model.FormatV1 || meta[model.MetaStep] != strconv.FormatInt(step, 10) {
			return nil, fmt.Errorf("%w: %s: format %q step %q, want %q step %d", ErrBadInput, path, meta[model.MetaFormat], meta[model.MetaStep], model.FormatV1, step)
		}
		resp.Files = append(resp.Files, path)
	}
	for i, st := range j.stages {
		for k, ps := range st.opt.States {
			copy(ps.T.W, staged[i][k].T.W)
			copy(ps.M, staged[i][k].M)
			copy(ps.V, staged[i][k].V)
			clear(ps.T.G)
		}
	}
	j.ready = 0
	s.setApplied(step)
	return resp, nil
}
