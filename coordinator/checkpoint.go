package coordinator

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"stagecoach/internal/confine"
	"stagecoach/internal/metrics"
	"stagecoach/model"
	pb "stagecoach/proto"
	"stagecoach/worker"
)

// Checkpoints.
//
// A checkpoint is one directory per step under the checkpoint root
// (Config.CheckpointDir), holding one shard file per stage, written by the
// workers (and, for a vacant SkipPipe stage, by the coordinator). Its
// manifest, with every shard's size and SHA-256 as the writer computed
// them from the bytes it wrote, is put in etcd in the transaction that
// commits its step. Every load checks a shard against its manifest entry
// before parsing it (the workers do, LoadCheckpoint), so a damaged file
// is caught as such, not trained on.
//
// A listed checkpoint is used only when its directory lies under the
// checkpoint root (lexically and through symlinks) and it has a digest for
// every stage. One that is not, or whose shards fail verification, is
// skipped (logged, counted in stagecoach_coordinator_checkpoints_skipped_total)
// and the previous listed one is tried, down to the seeded initial state:
// the restore then replays more committed steps, each checked against its
// commit record, so the result is exactly the state of the last committed
// step either way. Only directories under the root are ever deleted.

// CheckpointManifest is what etcd lists about a checkpoint. It is put in
// the same transaction as its step's commit, after every worker has
// written and synced its files, so etcd never lists a checkpoint of an
// uncommitted step or one whose files are missing.
type CheckpointManifest struct {
	Step  int64 `json:"step"`
	Epoch int64 `json:"epoch"`
	// Base is the directory handed to the workers; Dir the step's own.
	Base  string   `json:"base"`
	Dir   string   `json:"dir"`
	Files []string `json:"files"`
	// DataPosition is the sampler state after the step's windows, so a
	// resumed run draws exactly the windows an uninterrupted one would.
	DataPosition string `json:"data_position"`
	// Shards has every stage's shard file with its size and SHA-256,
	// by stage.
	Shards []ShardDigest `json:"shards,omitempty"`
	// Layers is each stage's layer count in the plan that wrote the
	// shards (absent: the even split, model.Split). A plan that splits
	// the model otherwise loads a cut of them (resplit.go).
	Layers []int `json:"layers,omitempty"`
}

// ShardDigest is one stage's shard file in a checkpoint manifest.
type ShardDigest struct {
	Stage  int    `json:"stage"`
	File   string `json:"file"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

// digest parses the recorded size and SHA-256.
func (d ShardDigest) digest() (model.Digest, error) {
	sum, err := hex.DecodeString(d.SHA256)
	if err != nil {
		return model.Digest{}, fmt.Errorf("stage %d: SHA-256 %q: %w", d.Stage, d.SHA256, err)
	}
	dg, err := model.ParseDigest(d.Size, sum)
	if err != nil {
		return model.Digest{}, fmt.Errorf("stage %d: %w", d.Stage, err)
	}
	return dg, nil
}

func shardDigestFromPB(d *pb.ShardDigest) ShardDigest {
	return ShardDigest{Stage: int(d.GetStage()), File: d.GetFile(), Size: d.GetSize(), SHA256: hex.EncodeToString(d.GetSha256())}
}

// shardsPB is the manifest's digests as LoadCheckpoint takes them.
func shardsPB(ds []ShardDigest) []*pb.ShardDigest {
	out := make([]*pb.ShardDigest, 0, len(ds))
	for _, d := range ds {
		sum, _ := hex.DecodeString(d.SHA256) // checked by checkListing
		out = append(out, &pb.ShardDigest{Stage: int32(d.Stage), File: d.File, Size: d.Size, Sha256: sum})
	}
	return out
}

// shardSet collects the digests reported for one checkpoint, one per
// stage; replicas of a stage write the same bytes, so they must agree.
type shardSet map[int]ShardDigest

func (s shardSet) add(d ShardDigest) error {
	if prev, ok := s[d.Stage]; ok && (prev.Size != d.Size || prev.SHA256 != d.SHA256) {
		return fmt.Errorf("coordinator: replicas of stage %d saved different shards (%d bytes, SHA-256 %s; and %d bytes, %s)", d.Stage, prev.Size, prev.SHA256, d.Size, d.SHA256)
	}
	s[d.Stage] = d
	return nil
}

func (s shardSet) sorted() []ShardDigest {
	out := make([]ShardDigest, 0, len(s))
	for _, d := range s {
		out = append(out, d)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Stage < out[j].Stage })
	return out
}

func (r *run) wantCheckpoint(step int64) bool {
	c := r.cfg
	return c.Checkpoint && step == int64(c.Steps) || c.CheckpointEvery > 0 && step%int64(c.CheckpointEvery) == 0
}

// root is the checkpoint root.
func (r *run) root() confine.Root {
	root, _ := confine.New(r.cfg.CheckpointDir) // absolute since Validate
	return root
}

// saveShards asks every worker to save its shards of step under base, adds
// the vacant stages' and returns every stage's digest.
func (r *run) saveShards(ctx context.Context, what string, base string, step int64) ([]ShardDigest, error) {
	got := make([][]*pb.ShardDigest, len(r.workers))
	err := r.fanOut(ctx, fmt.Sprintf("%s %d", what, step), func(ctx context.Context, w *workerConn) error {
		resp, err := w.cli.SaveCheckpoint(ctx, &pb.CheckpointRequest{Fence: r.fence, Dir: base, Step: step})
		if err == nil {
			got[w.idx] = resp.GetShards()
		}
		return err
	})
	if hasCode(err, codes.PermissionDenied) {
		// A retry would be refused the same way.
		return nil, fmt.Errorf("%w: %w (the checkpoint directory must lie under every worker's --checkpoint-root)", errNotDeterministic, err)
	}
	if err != nil {
		return nil, err
	}
	set := shardSet{}
	for _, ds := range got {
		for _, d := range ds {
			if err := set.add(shardDigestFromPB(d)); err != nil {
				return nil, err
			}
		}
	}
	vacant, err := r.fillVacant(ctx, base, step)
	if err != nil {
		return nil, err
	}
	for _, d := range vacant {
		if err := set.add(d); err != nil {
			return nil, err
		}
	}
	for s := range r.plan.Stages {
		if _, ok := set[s]; !ok {
			return nil, fmt.Errorf("coordinator: %s %d: no worker saved stage %d", what, step, s)
		}
	}
	return set.sorted(), nil
}

// saveCheckpoint asks every worker to save its shards after step.
func (r *run) saveCheckpoint(ctx context.Context, step int64) (*CheckpointManifest, error) {
	// Workers put each step in its own subdirectory of base.
	base := r.cfg.CheckpointDir
	shards, err := r.saveShards(ctx, "SaveCheckpoint", base, step)
	if err != nil {
		return nil, err
	}
	m := &CheckpointManifest{Step: step, Epoch: r.fence.Epoch, Base: base, Dir: worker.StepDir(base, step), DataPosition: r.sampler.State(), Shards: shards, Layers: planLayers(r.plan)}
	for _, d := range shards {
		m.Files = append(m.Files, d.File)
	}
	return m, nil
}

// checkListing decides whether a listed checkpoint may be used: its base
// directory and step directory lie under the checkpoint root and every
// stage of the current plan has a well-formed digest. It returns the
// metrics reason with the error.
func (r *run) checkListing(m *CheckpointManifest) (string, error) {
	// A checkpoint is listed in its step's commit: one past the last
	// trusted commit was not listed by a leader (etcdx.Committer), and
	// restoring it would resume after steps never committed.
	if last := r.committer.Last().Step; m.Step > last {
		return metrics.SkipUnverifiable, fmt.Errorf("checkpoint of step %d: listed past the last committed step %d", m.Step, last)
	}
	if _, err := r.stepDirOf(m); err != nil {
		return metrics.SkipOutsideRoot, err
	}
	have := map[int]bool{}
	for _, d := range m.Shards {
		if _, err := d.digest(); err != nil {
			return metrics.SkipUnverifiable, fmt.Errorf("checkpoint of step %d: %w", m.Step, err)
		}
		have[d.Stage] = true
	}
	for s := range r.plan.Stages {
		if !have[s] {
			return metrics.SkipUnverifiable, fmt.Errorf("checkpoint of step %d lists no size and SHA-256 for stage %d", m.Step, s)
		}
	}
	return "", nil
}

// stepDirOf is a listed checkpoint's step directory, which must lie
// under the checkpoint root (Base absolute, the step positive); it cleans
// m.Base.
func (r *run) stepDirOf(m *CheckpointManifest) (string, error) {
	if m.Step < 1 {
		return "", fmt.Errorf("checkpoint of step %d: not a step", m.Step)
	}
	if !filepath.IsAbs(m.Base) {
		return "", fmt.Errorf("checkpoint of step %d: base directory %q is not absolute", m.Step, m.Base)
	}
	root := r.root()
	base, err := root.Path(m.Base)
	if err != nil {
		return "", fmt.Errorf("checkpoint of step %d: %w", m.Step, err)
	}
	dir, err := root.Path(worker.StepDir(base, m.Step))
	if err != nil {
		return "", fmt.Errorf("checkpoint of step %d: %w", m.Step, err)
	}
	m.Base = base
	return dir, nil
}

// usableCheckpoints are the listed checkpoints checkListing accepts,
// newest first; the others are logged and counted.
func (r *run) usableCheckpoints(ctx context.Context) ([]CheckpointManifest, error) {
	ms, err := r.listCheckpoints(ctx)
	if err != nil {
		return nil, err
	}
	var out []CheckpointManifest
	for i := len(ms) - 1; i >= 0; i-- {
		if reason, err := r.checkListing(&ms[i]); err != nil {
			r.skipCheckpoint(reason, err)
			continue
		}
		out = append(out, ms[i])
	}
	return out, nil
}

func (r *run) skipCheckpoint(reason string, err error) {
	r.cfg.Logf("skipping listed %v (%s); trying the previous one", err, reason)
	r.cfg.Metrics.CheckpointSkipped(reason)
}

// restoreNewest loads the newest usable listed checkpoint into every
// worker and rewinds the sampler to it, falling back to older ones when a
// worker finds a shard corrupt. It returns the checkpoint used; with none,
// the job's initial checkpoint (Config.InitFrom) when it has one, else
// nil: the workers then hold the seeded initial state and the sampler is
// rewound to the start. The workers must have been configured fresh.
func (r *run) restoreNewest(ctx context.Context) (*CheckpointManifest, error) {
	ms, err := r.usableCheckpoints(ctx)
	if err != nil {
		return nil, err
	}
	tried := false
	for i := range ms {
		m := &ms[i]
		tried = true
		err := r.restore(ctx, m)
		if err == nil {
			return m, nil
		}
		reason := checkpointUnusable(err)
		if reason == "" {
			return nil, err
		}
		r.skipCheckpoint(reason, fmt.Errorf("checkpoint of step %d: %w", m.Step, err))
	}
	if tried {
		// A worker may have loaded a checkpoint another refused.
		if _, err := r.configureWith(ctx, r.planJSON, r.planTrain, true); err != nil {
			return nil, err
		}
		if r.cfg.InitFrom == nil {
			r.cfg.Logf("no listed checkpoint loads: restarting from the seeded initial state")
		}
	}
	if r.cfg.InitFrom != nil {
		m, err := r.initCheckpoint()
		if err != nil {
			return nil, err
		}
		if tried {
			r.cfg.Logf("no listed checkpoint loads: restarting from the initial checkpoint %s (step %d)", r.cfg.InitFrom.Path, m.Step)
		}
		if err := r.restore(ctx, m); err != nil {
			return nil, err
		}
		return m, nil
	}
	if err := r.sampler.SetState(r.initialData); err != nil {
		return nil, err
	}
	return nil, nil
}

// checkpointUnusable tells whether a fan-out failed because some worker
// found the checkpoint's files damaged (DataLoss) or gone (NotFound), and
// returns the metrics reason; "" for any other failure (a lost worker, a
// timeout), which a retry may cure.
func checkpointUnusable(err error) string {
	switch {
	case hasCode(err, codes.DataLoss):
		return metrics.SkipCorrupt
	case hasCode(err, codes.NotFound):
		return metrics.SkipMissing
	}
	return ""
}

// hasCode tells whether any error err wraps or joins is a gRPC status
// with code (errors.As stops at the first status, often a Canceled one).
func hasCode(err error, code codes.Code) bool {
	if err == nil {
		return false
	}
	if s, ok := status.FromError(err); ok && s.Code() == code {
		return true
	}
	switch u := err.(type) {
	case interface{ Unwrap() []error }:
		for _, x := range u.Unwrap() {
			if hasCode(x, code) {
				return true
			}
		}
	case interface{ Unwrap() error }:
		return hasCode(u.Unwrap(), code)
	}
	return false
}

// restore loads the checkpoint into every worker and rewinds the sampler.
func (r *run) restore(ctx context.Context, m *CheckpointManifest) error {
	if err := r.sampler.SetState(m.DataPosition); err != nil {
		return fmt.Errorf("coordinator: checkpoint of step %d: %w", m.Step, err)
	}
	return r.loadState(ctx, "LoadCheckpoint", m.Base, m.Step, m.Shards, m.Layers)
}

// newestListedStep is the step of the newest listed checkpoint, 0 for
// none, whether or not it turns out usable.
func (r *run) newestListedStep(ctx context.Context) (int64, error) {
	k := r.leader.Keys()
	resp, err := r.leader.Client().Get(ctx, k.CheckpointsPrefix(), append(clientv3.WithLastKey(), clientv3.WithPrefix(), clientv3.WithKeysOnly())...)
	if err != nil {
		return 0, fmt.Errorf("coordinator: read checkpoints of job %s: %w", k.Job(), err)
	}
	if len(resp.Kvs) == 0 {
		return 0, nil
	}
	n, err := strconv.ParseInt(strings.TrimPrefix(string(resp.Kvs[0].Key), k.CheckpointsPrefix()), 10, 64)
	if err != nil || n < 0 {
		return 0, nil // not a step: listCheckpoints skips it
	}
	return n, nil
}

// listCheckpoints reads every listed checkpoint manifest, oldest first.
// An entry that does not parse is skipped (logged and counted): it names
// nothing that could be loaded.
func (r *run) listCheckpoints(ctx context.Context) ([]CheckpointManifest, error) {
	k := r.leader.Keys()
	resp, err := r.leader.Client().Get(ctx, k.CheckpointsPrefix(), clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend))
	if err != nil {
		return nil, fmt.Errorf("coordinator: read checkpoints of job %s: %w", k.Job(), err)
	}
	out := make([]CheckpointManifest, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		var m CheckpointManifest
		if err := json.Unmarshal(kv.Value, &m); err != nil {
			r.skipCheckpoint(metrics.SkipUnverifiable, fmt.Errorf("checkpoint %s: %w", kv.Key, err))
			continue
		}
		if string(kv.Key) != k.Checkpoint(m.Step) {
			r.skipCheckpoint(metrics.SkipUnverifiable, fmt.Errorf("checkpoint %s: its manifest names step %d", kv.Key, m.Step))
			continue
		}
		out = append(out, m)
	}
	return out, nil
}

// retire returns the etcd deletions that keep at most Config.Retain
// checkpoints once the one of step is listed, and the directories to
// remove after that commit. Deleting the listing first (in the commit's
// transaction) and the files after means etcd never lists a checkpoint
// whose files are gone; a crash in between only leaves orphaned files.
// A directory is removed only when it is the step's own directory under
// the checkpoint root: a listing naming anything else is unlisted, its
// files left alone, with a warning.
func (r *run) retire(ctx context.Context, step int64) ([]clientv3.Op, []string, error) {
	if r.cfg.Retain <= 0 {
		return nil, nil, nil
	}
	ms, err := r.listCheckpoints(ctx)
	if err != nil {
		return nil, nil, err
	}
	var ops []clientv3.Op
	var dirs []string
	// The new one counts against the retention.
	for i := 0; i < len(ms)-(r.cfg.Retain-1) && len(ops) < 100; i++ {
		if ms[i].Step >= step {
			break
		}
		ops = append(ops, clientv3.OpDelete(r.leader.Keys().Checkpoint(ms[i].Step)))
		d, err := r.stepDirOf(&ms[i])
		if err != nil {
			r.cfg.Logf("retiring the listed checkpoint of step %d without deleting any files: %v", ms[i].Step, err)
			r.cfg.Metrics.CheckpointSkipped(metrics.SkipOutsideRoot)
			continue
		}
		dirs = append(dirs, d)
	}
	return ops, dirs, nil
}

// removeRetired deletes retired checkpoint directories, each confined to
// the root again at the moment of deletion.
func (r *run) removeRetired(dirs []string) {
	root := r.root()
	for _, d := range dirs {
		if _, err := root.Path(d); err != nil {
			r.cfg.Logf("not removing retired checkpoint %s: %v", d, err)
			continue
		}
		if err := os.RemoveAll(d); err != nil {
			r.cfg.Logf("remove retired checkpoint %s: %v", d, err)
		}
	}
}

// handoffDir is the hand-off directory of the current epoch, under the
// checkpoint root (the workers' root covers it).
func (r *run) handoffDir() string {
	return filepath.Join(r.cfg.CheckpointDir, "handoff", fmt.Sprintf("epoch-%d", r.fence.Epoch))
}
