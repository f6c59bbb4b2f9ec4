package coordinator_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"stagecoach/compute"
	"stagecoach/compute/builtin"
	"stagecoach/coordinator"
	"stagecoach/worker"
)

// breakingBackend is the built-in backend whose stages fail with
// compute.ErrBackend at their worker's forward number at (counted from
// 1), once over all the workers sharing fired.
type breakingBackend struct {
	worker string
	at     int
	fired  *breakOnce
}

// breakOnce records which worker's backend failed.
type breakOnce struct {
	mu     sync.Mutex
	worker string
}

func (b *breakingBackend) Name() string { return "breaking" }
func (b *breakingBackend) Close() error { return nil }

func (b *breakingBackend) Load(ctx context.Context, spec compute.LoadSpec) (compute.Stage, error) {
	st, err := builtin.Backend{}.Load(ctx, spec)
	if err != nil {
		return nil, err
	}
	return &breakingStage{Stage: st, b: b}, nil
}

type breakingStage struct {
	compute.Stage
	b        *breakingBackend
	forwards int
}

func (s *breakingStage) Describe() compute.Description {
	d := s.Stage.Describe()
	d.Backend = s.b.Name()
	return d
}

func (s *breakingStage) Forward(mb int, x *compute.Tensor) (*compute.Tensor, error) {
	s.forwards++
	if s.forwards == s.b.at {
		f := s.b.fired
		f.mu.Lock()
		first := f.worker == ""
		if first {
			f.worker = s.b.worker
		}
		f.mu.Unlock()
		if first {
			return nil, fmt.Errorf("%w: the backend process exited", compute.ErrBackend)
		}
	}
	return s.Stage.Forward(mb, x)
}

// TestBackendFailureIsALostWorker: the compute backend of a pipeline
// worker fails in the middle of step 3. The coordinator treats the worker
// as lost: it restores from the last checkpoint on the other worker and
// the spare, and the run finishes with the single-process trainer's
// parameters bit for bit and a gap-free commit sequence.
func TestBackendFailureIsALostWorker(t *testing.T) {
	corpus := writeCorpus(t)
	const job, steps, workers = "backend-failure", 5, 2
	tc := tinyTrain(2)
	_, wantParams := reference(t, tc, corpus, steps)
	fired := &breakOnce{}
	// Worker i holds one stage of 4 microbatches: forward 9 is the
	// first of step 3.
	cl := startClusterWith(t, job, workers+1, func(i int, c *worker.Config) {
		c.Backend = &breakingBackend{worker: c.Name, at: 2*tc.Microbatches + 1, fired: fired}
	})
	var recs []coordinator.Recovery
	co, err := coordinator.New(coordinator.Config{
		Job: job, Endpoints: cl.endpoints, TTL: 2, Workers: workers, Stages: workers, Schedule: "gpipe",
		Train: tc, Steps: steps, CorpusDir: corpus, OutDir: t.TempDir(), CheckpointDir: cl.root, Checkpoint: true,
		CheckpointEvery: 2, RPCTimeout: 30 * time.Second, ReplaceWait: time.Second,
		OnRecovery: func(r coordinator.Recovery) { recs = append(recs, r) },
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	sum, err := co.Run(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if fired.worker == "" {
		t.Fatal("no backend failed")
	}
	if len(recs) != 1 || recs[0].Kind != "restore" || recs[0].Step != 3 || !slices.Contains(recs[0].Lost, fired.worker) || recs[0].FromCheckpoint != 2 {
		t.Fatalf("recoveries %+v, want one restore of step 3 from checkpoint 2 that lost %s", recs, fired.worker)
	}
	if !strings.Contains(recs[0].Cause, "backend breaking") {
		t.Errorf("recovery cause %q does not name the backend", recs[0].Cause)
	}
	checkParams(t, sum.Checkpoint, wantParams)
	checkCommits(t, cl.endpoints, job, steps)
}
