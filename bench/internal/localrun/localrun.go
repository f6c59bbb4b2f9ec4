// Package localrun runs one Stagecoach job on loopback inside the calling
// process, for the bench commands: a fresh embedded etcd, in-process
// workers serving real gRPC on 127.0.0.1 (each registered in etcd under
// its own lease, named after the nodes of an emulated cluster) and the
// real coordinator. Only the process boundary differs from `stagecoach
// up`; the workers' links are emulated the same way.
package localrun

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.yaml.in/yaml/v3"

	"stagecoach/coordinator"
	"stagecoach/internal/etcdx"
	"stagecoach/internal/liveness"
	"stagecoach/model"
	"stagecoach/scheduler"
	"stagecoach/sim"
	"stagecoach/timeline"
	"stagecoach/worker"
)

// Job is one run.
type Job struct {
	// Name is the job id and the subdirectory of Dir the run writes to.
	Name     string
	Dir      string
	Schedule string
	// Nodes names the workers (the emulated cluster's nodes).
	Nodes  []string
	Stages int
	Train  model.TrainConfig
	Steps  int
	// Cluster is the emulated cluster (nil: plain loopback); Costs the
	// planning cost model (nil: the cluster's).
	Cluster *sim.Cluster
	Costs   *sim.Cluster
	// CheckpointEvery saves the workers' shards every that many steps.
	CheckpointEvery int
	CorpusDir       string
	MaxCorpusBytes  int64
	Logf            func(format string, args ...any)
	// OnStep is called after every committed step (its checkpoint, if
	// any, is on disk; the workers keep only the newest few).
	OnStep func(coordinator.StepReport)
	// Crash, when set, is asked after every committed step which workers
	// to crash, given the plan in force. They crash halfway through the
	// next step (by the last step's wall time): the gRPC server stops
	// without grace and the etcd session is orphaned, so the lease lapses
	// as a dead process's would. A crashed worker does not come back.
	Crash func(step int64, plan []coordinator.PlanWorker) []string
	// OnCrash, when set, is told when each crash happened (the failure
	// trace as it really was).
	OnCrash func(node string, at time.Time)
	// ReplaceWait is the coordinator's wait for replacement workers
	// after a loss (0: its default, 3 TTLs).
	ReplaceWait time.Duration
}

// CheckpointDir is where the workers of a job put step's checkpoint.
func (j Job) CheckpointDir(step int64) (string, error) {
	base, err := filepath.Abs(filepath.Join(j.Dir, j.Name, "checkpoints"))
	if err != nil {
		return "", err
	}
	return worker.StepDir(base, step), nil
}

// Run runs the job and returns the coordinator's summary.
func Run(ctx context.Context, j Job) (*coordinator.Summary, error) {
	out := filepath.Join(j.Dir, j.Name)
	if err := os.RemoveAll(out); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return nil, err
	}
	e, err := etcdx.StartEmbedded(ctx, etcdx.EmbedConfig{Dir: filepath.Join(out, "etcd")})
	if err != nil {
		return nil, fmt.Errorf("localrun %s: %w", j.Name, err)
	}
	defer e.Close()
	cli, err := etcdx.Dial(ctx, e.Endpoints(), 0)
	if err != nil {
		return nil, fmt.Errorf("localrun %s: %w", j.Name, err)
	}
	defer cli.Close()
	keys, err := etcdx.NewKeys(j.Name)
	if err != nil {
		return nil, err
	}
	quiet := func(string, ...any) {}
	type node struct {
		w       *worker.Server
		stop    context.CancelFunc
		crashed atomic.Bool
		done    chan struct{}
	}
	var mu sync.Mutex
	nodes := map[string]*node{}
	defer func() {
		mu.Lock()
		defer mu.Unlock()
		for _, n := range nodes {
			n.stop()
			<-n.done
			n.w.Stop(2 * time.Second)
		}
	}()
	// crash stops a worker as a crash does: at once, leaving its lease
	// to expire.
	crash := func(name string) {
		mu.Lock()
		n := nodes[name]
		delete(nodes, name)
		mu.Unlock()
		if n != nil {
			if j.OnCrash != nil {
				j.OnCrash(name, time.Now())
			}
			n.crashed.Store(true)
			n.stop()
			<-n.done
			n.w.Stop(0)
		}
	}
	for _, name := range j.Nodes {
		// The coordinator's checkpoint root (OutDir/checkpoints) is
		// every worker's: they share one disk here.
		w, err := worker.New(worker.Config{Name: name, Listen: "127.0.0.1:0", Job: j.Name,
			DataDir: filepath.Join(out, "workers", name), CheckpointRoot: filepath.Join(out, "checkpoints"), Logf: quiet})
		if err != nil {
			return nil, fmt.Errorf("localrun %s: worker %s: %w", j.Name, name, err)
		}
		addr, err := w.Start()
		if err != nil {
			return nil, fmt.Errorf("localrun %s: worker %s: %w", j.Name, name, err)
		}
		nctx, stop := context.WithCancel(ctx)
		n := &node{w: w, stop: stop, done: make(chan struct{})}
		registered := make(chan struct{})
		var once sync.Once
		mu.Lock()
		nodes[name] = n
		mu.Unlock()
		var keepErr error
		go func() {
			defer close(n.done)
			keepErr = liveness.Keep(nctx, cli, keys, etcdx.Member{Name: name, Addr: addr}, liveness.Options{
				Crashed:      n.crashed.Load,
				OnRegistered: func(int64) { once.Do(func() { close(registered) }) },
			})
		}()
		select {
		case <-registered:
		case <-n.done:
			return nil, fmt.Errorf("localrun %s: register %s: %v", j.Name, name, keepErr)
		}
	}
	cfg := coordinator.Config{Job: j.Name, Simulator: sim.Simulator{}, Endpoints: e.Endpoints(), Workers: len(j.Nodes), Stages: j.Stages,
		Schedule: j.Schedule, Train: j.Train, Steps: j.Steps, CorpusDir: j.CorpusDir, MaxCorpusBytes: j.MaxCorpusBytes,
		OutDir: out, CheckpointEvery: j.CheckpointEvery, Costs: j.Costs, Logf: j.Logf, OnStep: j.OnStep, ReplaceWait: j.ReplaceWait}
	if j.Crash != nil {
		cfg.OnStep = func(r coordinator.StepReport) {
			var m coordinator.PlanManifest
			if resp, err := cli.Get(ctx, keys.PlanPrefix(), clientv3.WithLastKey()...); err == nil && len(resp.Kvs) == 1 {
				_ = json.Unmarshal(resp.Kvs[0].Value, &m)
			}
			if names := j.Crash(r.Step, m.Workers); len(names) > 0 {
				time.AfterFunc(time.Duration(r.IterationS/2*float64(time.Second)), func() {
					for _, n := range names {
						crash(n)
					}
				})
			}
			if j.OnStep != nil {
				j.OnStep(r)
			}
		}
	}
	if j.Cluster != nil {
		if cfg.Cluster, err = coordinator.EncodeCluster(j.Cluster); err != nil {
			return nil, err
		}
	}
	co, err := coordinator.New(cfg)
	if err != nil {
		return nil, err
	}
	sum, err := co.Run(ctx)
	if err != nil {
		return nil, err
	}
	// The same files `stagecoach up` writes, for Perfetto and sim.
	if err := sum.WriteJSON(filepath.Join(out, "summary.json")); err != nil {
		return nil, err
	}
	if sum.Measured != nil {
		if err := sum.WriteTrace(filepath.Join(out, "trace.json")); err != nil {
			return nil, err
		}
	}
	if sum.CostModel != nil {
		if err := WriteYAML(filepath.Join(out, "calibration.yaml"), sum.CostModel); err != nil {
			return nil, err
		}
	}
	return sum, nil
}

// PipelineTime is when the last action other than an all-reduce or an
// optimizer step ends in r: the pipeline part of an iteration, which the
// SkipPipe authors' comparison (and the skippipe-geo preset) is about.
// 0 for a nil result.
func PipelineTime(r *timeline.Run) float64 {
	end := 0.0
	if r == nil {
		return 0
	}
	for _, s := range r.Timeline {
		if s.Track == timeline.TrackCompute && s.Action.Kind != scheduler.AllReduce && s.Action.Kind != scheduler.OptimizerStep {
			end = max(end, s.End)
		}
	}
	return end
}

// WriteYAML writes a cost model where `stagecoach sim --cluster` reads it.
func WriteYAML(path string, c *sim.Cluster) error {
	b, err := yaml.Marshal(c)
	if err != nil {
		return fmt.Errorf("localrun: encode %s: %w", path, err)
	}
	return os.WriteFile(path, b, 0o644)
}
