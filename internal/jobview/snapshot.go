// Package jobview reads what a Stagecoach job looks like right now from
// its etcd keys (Read: leader and fencing token, members with their
// stages and leases, plan epoch, last committed step and loss, newest
// checkpoint, recent recoveries, recent losses) and serves it to people:
// a JSON snapshot and a small live page embedded in the binary (Live).
// `stagecoach status` prints the snapshot; the coordinator serves the
// page on --http-addr.
//
// It reads etcd through a Source: a live cluster (EtcdSource) or the data
// directory an embedded etcd left behind (DiskSource), so a finished or
// killed local run can still be inspected. It decodes the coordinator's
// records by their JSON field names and imports neither the coordinator
// nor the simulator.
package jobview

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"time"

	"stagecoach/internal/etcdx"
)

// KV is one key as a Source returns it.
type KV struct {
	Key       string
	Value     []byte
	CreateRev int64
	ModRev    int64
	Lease     int64
}

// Source is read access to one etcd keyspace. Implementations read every
// call of one Read at the same revision where they can.
type Source interface {
	// Get returns key, or nil when it is absent.
	Get(ctx context.Context, key string) (*KV, error)
	// List returns the keys under prefix in key order; limit > 0 keeps
	// only the last limit of them.
	List(ctx context.Context, prefix string, limit int) ([]KV, error)
	// LeaseTTL is the lease's remaining and granted time to live in
	// seconds, -1 when it is gone or cannot be known.
	LeaseTTL(ctx context.Context, lease int64) (ttl, granted int64, err error)
	// Revision is the etcd revision the reads see (0 if unknown).
	Revision() int64
}

// Snapshot is a job as etcd holds it at one revision. Its JSON form is
// what `stagecoach status --json` prints and the live page polls; fields
// are only ever added to it.
type Snapshot struct {
	Job string `json:"job"`
	// Revision is the etcd revision read; ReadAt when.
	Revision int64     `json:"revision"`
	ReadAt   time.Time `json:"read_at"`
	// Offline, when set, says why this was read from an etcd data
	// directory on disk instead of a running etcd: the job is not
	// running, and leases (TTLs) are as etcd last stored them.
	Offline string `json:"offline,omitempty"`
	// Leader is the coordinator holding the job's election, nil if none.
	Leader *Leader `json:"leader"`
	// Members are the registered workers, by name.
	Members []Member `json:"members"`
	// Plan is the newest plan epoch, nil before the first.
	Plan *Plan `json:"plan"`
	// Committed is the last committed step, nil before the first.
	Committed *Commit `json:"committed"`
	// Checkpoint is the newest listed checkpoint, nil if none.
	Checkpoint *Checkpoint `json:"checkpoint"`
	// Recoveries are the recorded recoveries, oldest first (the
	// coordinator keeps the last few dozen).
	Recoveries []Recovery `json:"recoveries"`
	// Losses are the last committed steps' losses, oldest first
	// (Options.Losses of them).
	Losses []LossPoint `json:"losses,omitempty"`
	// Timeline is the last step's per-worker actions; only the live page
	// of the leading coordinator has it.
	Timeline *Timeline `json:"timeline,omitempty"`
}

// Leader is the coordinator that leads the job.
type Leader struct {
	// Name is the coordinator's election value (its --name).
	Name string `json:"name"`
	// FencingToken is the creation revision of its election key: every
	// order it gives carries it.
	FencingToken int64  `json:"fencing_token"`
	Key          string `json:"key"`
	Lease        string `json:"lease"`
	TTLS         int64  `json:"ttl_s"`
	GrantedS     int64  `json:"granted_s"`
}

// Member is a registered worker and what the current plan gives it.
type Member struct {
	Name string `json:"name"`
	Addr string `json:"addr"`
	// Lease is the registration's lease in hex; TTLS its remaining
	// seconds and GrantedS its full TTL (-1: gone or unknown).
	Lease    string `json:"lease"`
	TTLS     int64  `json:"ttl_s"`
	GrantedS int64  `json:"granted_s"`
	// InPlan tells whether the newest plan uses the worker; Stages and
	// Replica are its place there.
	InPlan  bool  `json:"in_plan"`
	Stages  []int `json:"stages"`
	Replica int   `json:"replica"`
}

// Plan is the newest plan epoch's manifest.
type Plan struct {
	Epoch     int64  `json:"epoch"`
	Schedule  string `json:"schedule"`
	Stages    int    `json:"stages"`
	LeaderRev int64  `json:"leader_rev"`
	SHA256    string `json:"sha256"`
	// Workers are the plan's workers in plan order; Vacant the stages
	// no worker holds (SkipPipe after a stage lost its last worker).
	Workers []PlanWorker `json:"workers"`
	Vacant  []int        `json:"vacant,omitempty"`
}

// PlanWorker is one plan worker.
type PlanWorker struct {
	Name    string `json:"name"`
	Addr    string `json:"addr"`
	Stages  []int  `json:"stages"`
	Replica int    `json:"replica"`
	// Registered is false when the worker's registration is gone (it
	// died or stopped and the coordinator has not replanned yet).
	Registered bool `json:"registered"`
}

// Commit is one committed step.
type Commit struct {
	Step      int64   `json:"step"`
	Epoch     int64   `json:"epoch"`
	LeaderRev int64   `json:"leader_rev"`
	Loss      float64 `json:"loss"`
}

// Checkpoint is the newest listed checkpoint.
type Checkpoint struct {
	Step  int64  `json:"step"`
	Epoch int64  `json:"epoch"`
	Dir   string `json:"dir"`
	Files int    `json:"files"`
}

// Recovery is one recorded recovery: a re-path around a lost worker, a
// restore from a checkpoint, a rejoin of workers, or a takeover by a new
// leader.
type Recovery struct {
	Step           int64      `json:"step"`
	Kind           string     `json:"kind"`
	Cause          string     `json:"cause"`
	Lost           []string   `json:"lost,omitempty"`
	Joined         []string   `json:"joined,omitempty"`
	Vacant         []int      `json:"vacant,omitempty"`
	Epoch          int64      `json:"epoch"`
	Workers        int        `json:"workers"`
	FromCheckpoint int64      `json:"from_checkpoint,omitempty"`
	Replayed       int64      `json:"replayed,omitempty"`
	DetectedAt     time.Time  `json:"detected_at"`
	ResumedAt      time.Time  `json:"resumed_at"`
	CommittedAt    *time.Time `json:"committed_at,omitempty"`
	RecoveryS      float64    `json:"recovery_s"`
	ToCommitS      float64    `json:"to_commit_s,omitempty"`
}

// LossPoint is one committed step's loss.
type LossPoint struct {
	Step int64   `json:"step"`
	Loss float64 `json:"loss"`
}

// Timeline is one step's actions per worker, as the workers timed them.
type Timeline struct {
	Step    int64            `json:"step"`
	SpanS   float64          `json:"span_s"`
	Workers []WorkerTimeline `json:"workers"`
}

// WorkerTimeline is one worker's actions in a step, in start order.
type WorkerTimeline struct {
	Worker  string        `json:"worker"`
	Actions []TimedAction `json:"actions"`
}

// TimedAction is one action ("F3@s1": forward of microbatch 3 on stage
// 1) in seconds from the step's first action.
type TimedAction struct {
	Action string  `json:"action"`
	Stage  int     `json:"stage"`
	StartS float64 `json:"start_s"`
	EndS   float64 `json:"end_s"`
}

// Options bound what Read returns.
type Options struct {
	// Losses is how many of the last committed steps' losses to read
	// (0: none; at most MaxLosses).
	Losses int
}

// maxStages bounds the stage count read from a plan manifest before the
// view allocates for it.
const maxStages = 1 << 16

// MaxLosses caps Options.Losses: a poll reads at most this many commit
// records.
const MaxLosses = 2000

// Read reads job k's snapshot from src. A record that does not parse is
// an error naming its key: the view shows what etcd holds or says why it
// cannot.
func Read(ctx context.Context, src Source, k etcdx.Keys, opt Options) (*Snapshot, error) {
	if opt.Losses < 0 || opt.Losses > MaxLosses {
		return nil, fmt.Errorf("jobview: %d loss points asked, want 0 to %d", opt.Losses, MaxLosses)
	}
	s := &Snapshot{Job: k.Job(), ReadAt: time.Now().UTC(), Members: []Member{}, Recoveries: []Recovery{}}
	// The iteration first: an etcd source pins its revision on the
	// first read, so every later read sees the same state.
	if kv, err := src.Get(ctx, k.Iteration()); err != nil {
		return nil, err
	} else if kv != nil {
		var c Commit
		if err := decode(kv, &c); err != nil {
			return nil, err
		}
		s.Committed = &c
	}
	s.Revision = src.Revision()
	if err := readLeader(ctx, src, k, s); err != nil {
		return nil, err
	}
	if err := readPlan(ctx, src, k, s); err != nil {
		return nil, err
	}
	if err := readMembers(ctx, src, k, s); err != nil {
		return nil, err
	}
	cks, err := src.List(ctx, k.CheckpointsPrefix(), 1)
	if err != nil {
		return nil, err
	}
	if len(cks) == 1 {
		var m struct {
			Step  int64    `json:"step"`
			Epoch int64    `json:"epoch"`
			Dir   string   `json:"dir"`
			Files []string `json:"files"`
		}
		if err := decode(&cks[0], &m); err != nil {
			return nil, err
		}
		s.Checkpoint = &Checkpoint{Step: m.Step, Epoch: m.Epoch, Dir: m.Dir, Files: len(m.Files)}
	}
	recs, err := src.List(ctx, k.RecoveriesPrefix(), 0)
	if err != nil {
		return nil, err
	}
	for i := range recs {
		var r Recovery
		if err := decode(&recs[i], &r); err != nil {
			return nil, err
		}
		s.Recoveries = append(s.Recoveries, r)
	}
	if opt.Losses > 0 {
		cs, err := src.List(ctx, k.CommitsPrefix(), opt.Losses)
		if err != nil {
			return nil, err
		}
		for i := range cs {
			var c Commit
			if err := decode(&cs[i], &c); err != nil {
				return nil, err
			}
			s.Losses = append(s.Losses, LossPoint{Step: c.Step, Loss: c.Loss})
		}
	}
	return s, nil
}

// readLeader finds the election key with the lowest creation revision:
// concurrency.Election's leader.
func readLeader(ctx context.Context, src Source, k etcdx.Keys, s *Snapshot) error {
	kvs, err := src.List(ctx, k.ElectionPrefix(), 0)
	if err != nil {
		return err
	}
	var best *KV
	for i := range kvs {
		if best == nil || kvs[i].CreateRev < best.CreateRev {
			best = &kvs[i]
		}
	}
	if best == nil {
		return nil
	}
	ttl, granted, err := src.LeaseTTL(ctx, best.Lease)
	if err != nil {
		return err
	}
	s.Leader = &Leader{Name: string(best.Value), FencingToken: best.CreateRev, Key: best.Key, Lease: leaseHex(best.Lease), TTLS: ttl, GrantedS: granted}
	return nil
}

func readPlan(ctx context.Context, src Source, k etcdx.Keys, s *Snapshot) error {
	kvs, err := src.List(ctx, k.PlanPrefix(), 1)
	if err != nil || len(kvs) == 0 {
		return err
	}
	var p Plan
	if err := decode(&kvs[0], &p); err != nil {
		return err
	}
	if p.Stages == 0 {
		// A manifest from before the stage count was recorded: the
		// stages its workers hold (a vacant last stage is not seen).
		for _, w := range p.Workers {
			for _, st := range w.Stages {
				if st >= p.Stages && st < maxStages {
					p.Stages = st + 1
				}
			}
		}
	}
	if p.Stages < 0 || p.Stages > maxStages {
		return fmt.Errorf("jobview: %s: %d stages, want 0 to %d", kvs[0].Key, p.Stages, maxStages)
	}
	held := make([]bool, p.Stages)
	for _, w := range p.Workers {
		for _, st := range w.Stages {
			if st >= 0 && st < len(held) {
				held[st] = true
			}
		}
	}
	for st, h := range held {
		if !h {
			p.Vacant = append(p.Vacant, st)
		}
	}
	s.Plan = &p
	return nil
}

// readMembers reads the registrations and places them on the plan.
func readMembers(ctx context.Context, src Source, k etcdx.Keys, s *Snapshot) error {
	kvs, err := src.List(ctx, k.MembersPrefix(), 0)
	if err != nil {
		return err
	}
	byName := map[string]*PlanWorker{}
	if s.Plan != nil {
		for i := range s.Plan.Workers {
			byName[s.Plan.Workers[i].Name] = &s.Plan.Workers[i]
		}
	}
	for i := range kvs {
		var m etcdx.Member
		name := strings.TrimPrefix(kvs[i].Key, k.MembersPrefix())
		if err := decode(&kvs[i], &m); err != nil {
			return err
		}
		if m.Name != name {
			return fmt.Errorf("jobview: %s registers worker %q", kvs[i].Key, m.Name)
		}
		ttl, granted, err := src.LeaseTTL(ctx, kvs[i].Lease)
		if err != nil {
			return err
		}
		mem := Member{Name: m.Name, Addr: m.Addr, Lease: leaseHex(kvs[i].Lease), TTLS: ttl, GrantedS: granted, Stages: []int{}}
		if pw, ok := byName[m.Name]; ok {
			mem.InPlan, mem.Stages, mem.Replica = true, pw.Stages, pw.Replica
			pw.Registered = pw.Addr == m.Addr
		}
		s.Members = append(s.Members, mem)
	}
	sort.Slice(s.Members, func(i, j int) bool { return s.Members[i].Name < s.Members[j].Name })
	return nil
}

func decode(kv *KV, v any) error {
	if err := json.Unmarshal(kv.Value, v); err != nil {
		return fmt.Errorf("jobview: %s holds %.80q: %w", kv.Key, kv.Value, err)
	}
	return nil
}

func leaseHex(id int64) string {
	if id == 0 {
		return ""
	}
	return fmt.Sprintf("%x", id)
}
