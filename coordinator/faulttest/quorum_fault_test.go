package faulttest

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"stagecoach/coordinator"
	"stagecoach/internal/etcdx"
	pb "stagecoach/proto"
	"stagecoach/sim"
)

// etcdMember is one `stagecoach etcd` process of a test cluster; start
// runs it again with the same data directory after a kill.
type etcdMember struct {
	name, client, peer string
	args               []string
	p                  *proc
}

func (m *etcdMember) start(t *testing.T) {
	m.p = start(t, m.name, append([]string{"etcd"}, m.args...)...)
}

// startEtcdCluster runs a three-member etcd cluster and waits until it
// serves; it returns the members and the job's env on that cluster.
func startEtcdCluster(t *testing.T, job string) ([]*etcdMember, *env) {
	t.Helper()
	ms := make([]*etcdMember, 3)
	var initial, eps []string
	for i := range ms {
		ms[i] = &etcdMember{name: fmt.Sprintf("etcd%d", i),
			client: fmt.Sprintf("http://127.0.0.1:%d", freePort(t)), peer: fmt.Sprintf("http://127.0.0.1:%d", freePort(t))}
		initial = append(initial, ms[i].name+"="+ms[i].peer)
		eps = append(eps, strings.TrimPrefix(ms[i].client, "http://"))
	}
	for _, m := range ms {
		m.args = []string{"--name", m.name, "--data-dir", t.TempDir(),
			"--listen-client-urls", m.client, "--advertise-client-urls", m.client,
			"--listen-peer-urls", m.peer, "--initial-advertise-peer-urls", m.peer,
			"--initial-cluster", strings.Join(initial, ","), "--initial-cluster-token", job, "--log-level", "error"}
		m.start(t)
	}
	ctx := context.Background()
	cli, err := etcdx.Dial(ctx, eps, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	poll(t, 30*time.Second, "the etcd cluster serves", func() bool {
		c, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		_, err := cli.Put(c, "/stagecoach-probe", "1")
		return err == nil
	})
	keys, err := etcdx.NewKeys(job)
	if err != nil {
		t.Fatal(err)
	}
	return ms, &env{job: job, endpoints: eps, cli: cli, keys: keys, corpus: writeCorpus(t), root: t.TempDir(), workers: map[string]*proc{}}
}

// runTerms runs coordinator terms in turn (each as a standby taking over
// from the one before) until one finishes the run, at most n.
func runTerms(t *testing.T, cfg coordinator.Config, n int) *coordinator.Summary {
	t.Helper()
	cfg.Logf = t.Logf
	for term := 1; term <= n; term++ {
		co, err := coordinator.New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
		sum, err := co.Run(ctx)
		cancel()
		if err == nil {
			return sum
		}
		t.Logf("coordinator term %d: %v", term, err)
	}
	t.Fatalf("the run did not finish in %d coordinator terms", n)
	return nil
}

// TestLoseEtcdQuorum kills -9 two of three etcd members mid-run and
// starts them again (same data directories) a few seconds later. While
// quorum is gone nothing is committed; the leader coordinator loses its
// lease and steps down, and the next term (a standby here) resumes from
// the committed iteration once etcd serves again. The run finishes with a
// gap-free, duplicate-free commit sequence and the fault-free parameters:
// a step a worker applied but nobody could commit was rolled back.
func TestLoseEtcdQuorum(t *testing.T) {
	const job, steps, outage = "lose-quorum", 20, 4 * time.Second
	ms, e := startEtcdCluster(t, job)
	ctx, cli, eps, keys := context.Background(), e.cli, e.endpoints, e.keys
	e.startWorkers(t, "w0", "w1", "w2", "w3")
	tc := tiny(4, 4)
	_, want := reference(t, tc, e.corpus, steps)

	members, _, err := etcdx.Members(ctx, cli, keys)
	if err != nil || len(members) != 4 {
		t.Fatalf("members: %v (%d)", err, len(members))
	}
	// appliedSteps asks every worker, over gRPC (etcd is down), which
	// step it has applied.
	appliedSteps := func() map[string]int64 {
		out := map[string]int64{}
		for _, m := range members {
			wc, closeFn, err := coordinator.DialWorker(ctx, m.Addr)
			if err != nil {
				t.Error(err)
				continue
			}
			c, cancel := context.WithTimeout(ctx, 5*time.Second)
			st, err := wc.Status(c, &pb.StatusRequest{})
			cancel()
			closeFn()
			if err != nil {
				t.Errorf("status of %s during the outage: %v", m.Name, err)
				continue
			}
			out[m.Name] = st.GetAppliedStep()
		}
		return out
	}
	var duringOutage map[string]int64
	var mu sync.Mutex
	var commits []time.Time
	var killed, restarted time.Time
	back := make(chan struct{})
	cfg := coordinator.Config{Simulator: sim.Simulator{}, Job: job, Endpoints: eps, TTL: ttl, Workers: 4, Schedule: "gpipe", Train: tc, Steps: steps,
		CorpusDir: e.corpus, OutDir: t.TempDir(), CheckpointDir: e.root, Checkpoint: true, CheckpointEvery: 5, RPCTimeout: 30 * time.Second,
		OnStep: func(r coordinator.StepReport) {
			mu.Lock()
			defer mu.Unlock()
			commits = append(commits, time.Now())
			if r.Step == 6 && killed.IsZero() {
				ms[1].p.signal(syscall.SIGKILL)
				ms[2].p.signal(syscall.SIGKILL)
				killed = time.Now()
				go func() {
					time.Sleep(outage)
					duringOutage = appliedSteps()
					<-ms[1].p.done
					<-ms[2].p.done
					mu.Lock()
					ms[1].start(t)
					ms[2].start(t)
					restarted = time.Now()
					mu.Unlock()
					close(back)
				}()
			}
		}}
	sum := runTerms(t, cfg, 4)
	select {
	case <-back:
	default:
		t.Fatal("the etcd members were never restarted")
	}
	mu.Lock()
	defer mu.Unlock()
	first := time.Time{}
	for _, c := range commits {
		if c.After(killed) && c.Before(restarted) {
			t.Errorf("a step was committed %.3f s into the quorum outage", c.Sub(killed).Seconds())
		}
		if c.After(restarted) && first.IsZero() {
			first = c
		}
	}
	// Without etcd at most the step whose commit is pending can have been
	// applied: the coordinator runs no further step until it commits.
	for name, a := range duringOutage {
		if a > 7 {
			t.Errorf("worker %s applied step %d during the outage; the last commit before it was step 6", name, a)
		}
	}
	if len(duringOutage) != 4 {
		t.Errorf("applied steps during the outage: %v, want all 4 workers", duringOutage)
	}
	t.Logf("applied steps at the end of the outage: %v (step 6 committed, 7 pending)", duringOutage)
	t.Logf("FAULT lose etcd quorum: 2 of 3 members killed after step 6 for %.1f s; no commit meanwhile; first commit %.3f s after they were restarted",
		restarted.Sub(killed).Seconds(), first.Sub(restarted).Seconds())
	e.checkCommits(t, steps)
	checkParams(t, sum.Checkpoint, want)
}
