package composetest

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"stagecoach/coordinator"
	"stagecoach/internal/etcdx"
	"stagecoach/internal/tlsx"
)

const (
	// job is the job id docker-compose.yml gives both coordinators and
	// every worker.
	job = "compose"
	// steps keeps the run long enough for two faults and the status and
	// live-page checks after them: the default model takes 0.3-0.5 s a
	// step over four containers with the AVX2 kernel on two quiet cores
	// (150 steps were over before a status check on a loaded CI host had
	// finished), 1-2 s on a busy host.
	steps = 300
	// budget bounds the whole test, image build included; the cleanup has
	// its own time on top.
	budget = 15 * time.Minute
	// queryTimeout bounds a docker-compose query (ps, port, logs): on a
	// loaded host the Python client alone has taken over 30 s.
	queryTimeout = 2 * time.Minute
)

// requireDocker skips the test when no Docker engine or docker-compose is
// available, except under STAGECOACH_REQUIRE_DOCKER=1, where CI must not
// pass by skipping.
func requireDocker(t *testing.T) {
	t.Helper()
	required := os.Getenv("STAGECOACH_REQUIRE_DOCKER") == "1"
	if testing.Short() && !required {
		t.Skip("compose end-to-end test takes a minute or two; skipped under -short")
	}
	missing := func(format string, args ...any) {
		t.Helper()
		msg := fmt.Sprintf(format, args...)
		if required {
			t.Fatalf("%s, and STAGECOACH_REQUIRE_DOCKER=1 forbids skipping", msg)
		}
		t.Skipf("%s; skipping the compose test (set STAGECOACH_REQUIRE_DOCKER=1 to make this a failure)", msg)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "docker", "info", "--format", "{{.ServerVersion}}").CombinedOutput(); err != nil {
		missing("no Docker engine answers `docker info`: %v: %s", err, bytes.TrimSpace(out))
	}
	if _, err := exec.LookPath("docker-compose"); err != nil {
		missing("docker-compose (v1) is not on PATH: %v", err)
	}
}

// cluster is one docker-compose project of the repository's compose file.
type cluster struct {
	t       *testing.T
	root    string
	project string
	env     []string
	// certs holds the certificates copied out of the certs volume.
	certs string
}

// compose runs docker-compose on the project, bounded by timeout, and
// returns its standard output (service logs, a published port); progress
// and warnings on standard error only appear in errors.
func (c *cluster) compose(ctx context.Context, timeout time.Duration, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	full := append([]string{"-f", filepath.Join(c.root, "docker-compose.yml"), "-p", c.project, "--ansi", "never"}, args...)
	cmd := exec.CommandContext(ctx, "docker-compose", full...)
	cmd.Dir = c.root
	cmd.Env = append(os.Environ(), c.env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("docker-compose %s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(stderr.Bytes()))
	}
	return stdout.String(), nil
}

func (c *cluster) mustCompose(ctx context.Context, timeout time.Duration, args ...string) string {
	c.t.Helper()
	out, err := c.compose(ctx, timeout, args...)
	if err != nil {
		c.t.Fatal(err)
	}
	return out
}

// etcdEndpoints are the loopback ports Docker published for the three
// members' client port.
func (c *cluster) etcdEndpoints(ctx context.Context) []string {
	c.t.Helper()
	var eps []string
	for _, m := range []string{"etcd-1", "etcd-2", "etcd-3"} {
		out := strings.TrimSpace(c.mustCompose(ctx, queryTimeout, "port", m, "2379"))
		if !strings.HasPrefix(out, "127.0.0.1:") {
			c.t.Fatalf("%s's client port is published as %q, want 127.0.0.1:PORT", m, out)
		}
		eps = append(eps, out)
	}
	return eps
}

// leader is the coordinator service that has announced leadership. Only
// call it before any coordinator has failed over: a standby blocked in its
// campaign has not printed the line.
func (c *cluster) leader(ctx context.Context) string {
	c.t.Helper()
	var leaders []string
	for _, s := range []string{"coordinator-1", "coordinator-2"} {
		if strings.Contains(c.mustCompose(ctx, queryTimeout, "logs", "--no-color", s), "leading job "+job) {
			leaders = append(leaders, s)
		}
	}
	if len(leaders) != 1 {
		c.t.Fatalf("want exactly one coordinator leading, logs show %v", leaders)
	}
	return leaders[0]
}

// leaderWithToken names the coordinator that logged leading the job with
// this fencing token.
func (c *cluster) leaderWithToken(ctx context.Context, token int64) string {
	c.t.Helper()
	want := fmt.Sprintf("leading job %s with fencing token %d", job, token)
	for _, s := range []string{"coordinator-1", "coordinator-2"} {
		if strings.Contains(c.mustCompose(ctx, queryTimeout, "logs", "--no-color", s), want) {
			return s
		}
	}
	c.t.Fatalf("no coordinator logged %q", want)
	return ""
}

// waitCommit polls the committed iteration until ok holds, for at most
// timeout, and returns the commit and when it was seen.
func waitCommit(ctx context.Context, t *testing.T, cli *clientv3.Client, k etcdx.Keys, timeout time.Duration, what string, ok func(etcdx.Commit) bool) (etcdx.Commit, time.Time) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last etcdx.Commit
	for {
		rctx, rcancel := context.WithTimeout(ctx, 5*time.Second)
		c, _, err := etcdx.Iteration(rctx, cli, k)
		rcancel()
		if err == nil {
			last = c
			if ok(c) {
				return c, time.Now()
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("waited %v for %s; last committed step %d (epoch %d, leader rev %d), last error %v", timeout, what, last.Step, last.Epoch, last.LeaderRev, err)
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// latestPlan reads the manifest of the highest plan epoch.
func latestPlan(ctx context.Context, t *testing.T, cli *clientv3.Client, k etcdx.Keys) coordinator.PlanManifest {
	t.Helper()
	resp, err := cli.Get(ctx, k.PlanPrefix(), clientv3.WithLastKey()...)
	if err != nil || len(resp.Kvs) == 0 {
		t.Fatalf("read the latest plan manifest: %v (%d keys)", err, len(resp.Kvs))
	}
	var m coordinator.PlanManifest
	if err := json.Unmarshal(resp.Kvs[0].Value, &m); err != nil {
		t.Fatalf("%s: %v", resp.Kvs[0].Key, err)
	}
	return m
}

func planNames(m coordinator.PlanManifest) []string {
	var names []string
	for _, w := range m.Workers {
		names = append(names, w.Name)
	}
	return names
}

// The image the tests run: STAGECOACH_COMPOSE_IMAGE, or one built from
// the working tree by the first test that needs it and removed by
// TestMain after the last.
var (
	imageOnce  sync.Once
	builtImage string
	imageErr   error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if builtImage != "" {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		if out, err := exec.CommandContext(ctx, "docker", "rmi", builtImage).CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "remove image %s: %v: %s\n", builtImage, err, bytes.TrimSpace(out))
		}
		cancel()
	}
	os.Exit(code)
}

func testImage(t *testing.T, ctx context.Context, root string) string {
	t.Helper()
	if image, ok := os.LookupEnv("STAGECOACH_COMPOSE_IMAGE"); ok {
		t.Logf("using the image %s (STAGECOACH_COMPOSE_IMAGE), not building one", image)
		return image
	}
	imageOnce.Do(func() {
		start := time.Now()
		image := fmt.Sprintf("stagecoach:sct%d%d", os.Getpid(), time.Now().UnixNano()%1_000_000)
		bctx, bcancel := context.WithTimeout(ctx, 4*time.Minute)
		defer bcancel()
		build := exec.CommandContext(bctx, "bash", "deploy/build-image.sh", image)
		build.Dir = root
		// The script's go build and docker build die with it when the
		// budget runs out: its own process group, killed whole.
		build.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		build.Cancel = func() error { return syscall.Kill(-build.Process.Pid, syscall.SIGKILL) }
		out, err := build.CombinedOutput()
		if err != nil {
			imageErr = fmt.Errorf("build the image: %v\n%s", err, out)
			return
		}
		builtImage = image
		t.Logf("built %s in %.1f s", image, time.Since(start).Seconds())
	})
	if imageErr != nil {
		t.Fatal(imageErr)
	}
	return builtImage
}

// startCluster brings up a compose project of its own running steps steps
// of gpipe from testImage, and returns it with a mutual-TLS etcd client
// (the certificate of the `coordinator` service, copied out of the certs
// volume) and the job's keys. Cleanup tears the project down.
func startCluster(t *testing.T, ctx context.Context, steps int) (*cluster, *clientv3.Client, etcdx.Keys, time.Time) {
	t.Helper()
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "docker-compose.yml")); err != nil {
		t.Fatalf("no docker-compose.yml at the repository root: %v", err)
	}
	// A project and image tag of our own, so concurrent runs and a
	// developer's `docker-compose up` never share containers, volumes or
	// the image under test.
	project := fmt.Sprintf("sct%d%d", os.Getpid(), time.Now().UnixNano()%1_000_000)
	image := testImage(t, ctx, root)
	c := &cluster{t: t, root: root, project: project,
		env: []string{"STAGECOACH_IMAGE=" + image, fmt.Sprintf("STAGECOACH_STEPS=%d", steps), "STAGECOACH_SCHEDULE=gpipe"}}

	t.Cleanup(func() {
		// The test's context may have expired: cleanup has its own time.
		cctx, ccancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer ccancel()
		if t.Failed() {
			if out, err := c.compose(cctx, queryTimeout, "ps"); err == nil {
				t.Logf("containers at failure:\n%s", out)
			}
			if out, err := c.compose(cctx, queryTimeout, "logs", "--no-color", "--tail", "40", "coordinator-1", "coordinator-2"); err == nil {
				t.Logf("coordinator logs:\n%s", out)
			}
		}
		if _, err := c.compose(cctx, 2*time.Minute, "down", "-v", "--remove-orphans", "-t", "5"); err != nil {
			t.Errorf("tear down: %v", err)
		}
	})

	// Everything but the coordinators first: the queries below take tens
	// of seconds on a loaded host, longer than a fast job runs.
	c.mustCompose(ctx, 2*time.Minute, "up", "-d", "worker-1", "worker-2", "worker-3", "worker-4", "worker-5")
	// Every hop runs mutual TLS: etcd refuses a client without a
	// certificate of the compose CA.
	certs := c.copyCerts(ctx)
	c.certs = certs
	tc := loadTLS(t, certs, "coordinator")
	eps := c.etcdEndpoints(ctx)
	cli, err := etcdx.DialTLS(ctx, eps, 10*time.Second, tc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	if plain, err := etcdx.Dial(ctx, eps, 3*time.Second); err == nil {
		plain.Close()
		t.Error("etcd answered a plaintext client: compose must run etcd over mutual TLS")
	}
	keys, err := etcdx.NewKeys(job)
	if err != nil {
		t.Fatal(err)
	}
	// etcd authentication is on (the etcd-auth service ran before the
	// workers started): a worker's certificate may not touch the job's
	// state, only its own registration.
	wcli, err := etcdx.DialTLS(ctx, eps, 10*time.Second, loadTLS(t, certs, "worker-1"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = wcli.Put(ctx, keys.Iteration(), "forged")
	wcli.Close()
	if !errors.Is(err, rpctypes.ErrPermissionDenied) {
		t.Errorf("a worker's certificate writing the job's iteration key: %v, want etcd's permission denied (auth on)", err)
	}
	upAt := time.Now()
	c.mustCompose(ctx, 2*time.Minute, "up", "-d")
	return c, cli, keys, upAt
}

// checkStatusAndLivePage reads the running job as a user would: with
// `stagecoach status` run inside the compose network (the coordinator's
// certificate: with etcd auth on, only the job's coordinator and root may
// read its state), and from the leader's live page over HTTPS with a
// client certificate. Both must show a step etcd has committed.
func (c *cluster) checkStatusAndLivePage(ctx context.Context, cli *clientv3.Client, keys etcdx.Keys, lead string) {
	t := c.t
	t.Helper()
	before, _ := waitCommit(ctx, t, cli, keys, 10*time.Second, "the current step", func(etcdx.Commit) bool { return true })
	// exec in the running leader, not `run`: a one-off container can take
	// longer to start than the job takes to finish on a quiet machine.
	out := c.mustCompose(ctx, 2*time.Minute, "exec", "-T", lead, "/stagecoach", "status",
		"--etcd", "etcd-1:2379,etcd-2:2379,etcd-3:2379", "--job", job, "--json",
		"--tls-cert", "/certs/coordinator.pem", "--tls-key", "/certs/coordinator-key.pem", "--tls-ca", "/certs/ca.pem")
	var st struct {
		Job    string `json:"job"`
		Leader *struct {
			FencingToken int64 `json:"fencing_token"`
		} `json:"leader"`
		Members   []struct{ Name string } `json:"members"`
		Committed *struct{ Step int64 }   `json:"committed"`
	}
	brace := strings.Index(out, "{")
	if brace < 0 {
		t.Fatalf("stagecoach status --json printed no JSON:\n%s", out)
	}
	if err := json.Unmarshal([]byte(out[brace:]), &st); err != nil {
		t.Fatalf("stagecoach status --json: %v\n%s", err, out)
	}
	if st.Job != job || st.Leader == nil || st.Leader.FencingToken != before.LeaderRev || len(st.Members) < 4 ||
		st.Committed == nil || st.Committed.Step < before.Step {
		t.Errorf("stagecoach status: job %q, leader %+v, %d members, committed %+v; want job %q, token %d, 5 members, step >= %d",
			st.Job, st.Leader, len(st.Members), st.Committed, job, before.LeaderRev, before.Step)
	}
	addr := strings.TrimSpace(c.mustCompose(ctx, queryTimeout, "port", lead, "8080"))
	tc := loadTLS(t, c.certs, "coordinator")
	hc := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: tc}}
	resp, err := hc.Get("https://" + addr + "/api/job")
	if err != nil {
		t.Fatalf("live page of %s at %s: %v", lead, addr, err)
	}
	defer resp.Body.Close()
	var live struct {
		Job       string                `json:"job"`
		Committed *struct{ Step int64 } `json:"committed"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&live); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("live page of %s: %s, %v", lead, resp.Status, err)
	}
	if live.Job != job || live.Committed == nil || live.Committed.Step < before.Step {
		t.Errorf("live page of %s: job %q, committed %+v; want step >= %d", lead, live.Job, live.Committed, before.Step)
	}
	plain := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: tc.RootCAs}}}
	if resp, err := plain.Get("https://" + addr + "/api/job"); err == nil {
		resp.Body.Close()
		t.Errorf("the live page answered a client without a certificate: %s", resp.Status)
	}
	t.Logf("status and the live page of %s show step %d (token %d)", lead, live.Committed.Step, before.LeaderRev)
}

// copyCerts copies the certificates out of the certs service's container
// (it has exited; its volume holds them) into a temporary directory.
func (c *cluster) copyCerts(ctx context.Context) string {
	c.t.Helper()
	id := strings.TrimSpace(c.mustCompose(ctx, queryTimeout, "ps", "-q", "certs"))
	if id == "" {
		c.t.Fatal("no container of the certs service")
	}
	dir := c.t.TempDir()
	if out, err := exec.CommandContext(ctx, "docker", "cp", id+":/certs/.", dir).CombinedOutput(); err != nil {
		c.t.Fatalf("copy the certificates out of %s: %v: %s", id, err, bytes.TrimSpace(out))
	}
	return dir
}

// loadTLS loads the certificate of one service (its role's) from dir.
func loadTLS(t *testing.T, dir, name string) *tls.Config {
	t.Helper()
	tc, err := tlsx.Load(tlsx.FilesFor(dir, name))
	if err != nil {
		t.Fatal(err)
	}
	return tc
}

// coordinatorsExited waits up to timeout for both coordinators to exit and
// checks each exited 0 without being restarted: a finished job, a stopped
// leader and a standby outliving the job all end cleanly.
func (c *cluster) coordinatorsExited(ctx context.Context, timeout time.Duration) {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	for _, s := range []string{"coordinator-1", "coordinator-2"} {
		id := strings.TrimSpace(c.mustCompose(ctx, 2*time.Minute, "ps", "-q", s))
		for {
			out, err := exec.CommandContext(ctx, "docker", "inspect", "-f", "{{.State.Status}} {{.State.ExitCode}} {{.RestartCount}}", id).CombinedOutput()
			if err != nil {
				c.t.Fatalf("inspect %s: %v: %s", s, err, out)
			}
			f := strings.Fields(string(out))
			if len(f) == 3 && f[0] == "exited" {
				if f[1] != "0" || f[2] != "0" {
					c.t.Errorf("%s exited with status %s after %s restarts, want 0 and 0", s, f[1], f[2])
				}
				break
			}
			if time.Now().After(deadline) {
				c.t.Errorf("%s still %s %v after the job finished", s, f[0], timeout)
				break
			}
			time.Sleep(500 * time.Millisecond)
		}
	}
	// A stop or a finished job ends without a trail of cancellations; a
	// failed step's report may name the RPCs it cancelled.
	logs := c.mustCompose(ctx, 2*time.Minute, "logs", "--no-color", "coordinator-1", "coordinator-2")
	for _, l := range strings.Split(logs, "\n") {
		if strings.Contains(l, "context canceled") && !strings.Contains(l, " failed: ") {
			c.t.Errorf("a coordinator's log says \"context canceled\" outside a failed step's report:\n%s", l)
		}
	}
}

// TestComposeTrainsThroughFaults brings up docker-compose.yml, stops the
// leader coordinator and kills a plan worker mid-run, and checks that the
// job still commits steps 1..steps exactly once, each fault answered by a
// new plan epoch.
//
// The leader must survive the worker's loss in-process (a new plan epoch
// on the remaining workers and the spare, shards restored from the last
// checkpoint) and log it; a standby must take over from a stopped leader
// with a larger fencing token. The logs must show a line per step and the
// stage map of every plan, and both coordinators must end with status 0.
func TestComposeTrainsThroughFaults(t *testing.T) {
	requireDocker(t)
	ctx, cancel := context.WithTimeout(context.Background(), budget)
	defer cancel()
	start := time.Now()
	c, cli, keys, upAt := startCluster(t, ctx, steps)

	// Fault 1: stop the leader coordinator a few steps in. The standby
	// must win, resume from the last committed step and commit under a new
	// plan epoch and a larger fencing token.
	before, firstAt := waitCommit(ctx, t, cli, keys, 2*time.Minute, "training to pass step 5", func(c etcdx.Commit) bool { return c.Step >= 5 })
	t.Logf("first 5 steps committed %.1f s after up", firstAt.Sub(upAt).Seconds())
	lead := c.leader(ctx)
	// Reading the logs took a while: note where training is right now.
	before, _ = waitCommit(ctx, t, cli, keys, 10*time.Second, "the current step", func(etcdx.Commit) bool { return true })
	stopAt := time.Now()
	c.mustCompose(ctx, time.Minute, "stop", "-t", "10", lead)
	after, at := waitCommit(ctx, t, cli, keys, time.Minute, "a commit by a new leader after stopping "+lead,
		func(c etcdx.Commit) bool { return c.Epoch > before.Epoch })
	if after.LeaderRev <= before.LeaderRev {
		t.Errorf("after the leader stopped, step %d was committed with fencing token %d, not above the old leader's %d", after.Step, after.LeaderRev, before.LeaderRev)
	}
	t.Logf("stopped leader %s at step >= %d: new leader committed step %d (epoch %d, token %d -> %d) %.1f s later",
		lead, before.Step, after.Step, after.Epoch, before.LeaderRev, after.LeaderRev, at.Sub(stopAt).Seconds())

	// Fault 2: kill -9 a worker of the current plan: worker-2 when the
	// plan holds it, else its second worker (the spare may be worker-2).
	before, _ = waitCommit(ctx, t, cli, keys, time.Minute, "two more steps under the new leader",
		func(c etcdx.Commit) bool { return c.Step >= after.Step+2 })
	plan := latestPlan(ctx, t, cli, keys)
	victim := "worker-2"
	if !slices.Contains(planNames(plan), victim) {
		victim = plan.Workers[1].Name
	}
	before, _ = waitCommit(ctx, t, cli, keys, 10*time.Second, "the current step", func(etcdx.Commit) bool { return true })
	killAt := time.Now()
	c.mustCompose(ctx, time.Minute, "kill", victim)
	after, at = waitCommit(ctx, t, cli, keys, 90*time.Second, "a commit on a new plan after killing "+victim,
		func(c etcdx.Commit) bool { return c.Epoch > before.Epoch })
	t.Logf("killed %s (plan %v) at step >= %d: step %d committed on epoch %d %.1f s later",
		victim, planNames(plan), before.Step, after.Step, after.Epoch, at.Sub(killAt).Seconds())
	if names := planNames(latestPlan(ctx, t, cli, keys)); slices.Contains(names, victim) {
		t.Errorf("the plan after killing %s still holds it: %v", victim, names)
	}
	// What `stagecoach status` and the live page of the new leader say,
	// while it trains (after the faults: checking them takes a while on a
	// loaded host, and the faults need the job still young).
	c.checkStatusAndLivePage(ctx, cli, keys, c.leaderWithToken(ctx, after.LeaderRev))

	// The workers run over the emulated links of deploy/compose-links.yaml.
	// (Log lines quote the cluster's name, escaped.)
	if wl := c.mustCompose(ctx, queryTimeout, "logs", "--no-color", "worker-1", "worker-2", "worker-3", "worker-4", "worker-5"); strings.Count(wl, `emulating the links of cluster \"compose-two-regions`) < 4 {
		t.Errorf("fewer than 4 worker configurations emulated the compose links; worker logs:\n%s", wl)
	}

	// The leader must have survived the loss in-process, saying so, rather
	// than by exiting and being restarted by Docker.
	logs := c.mustCompose(ctx, queryTimeout, "logs", "--no-color", "coordinator-1", "coordinator-2")
	var recovered []string
	for _, l := range strings.Split(logs, "\n") {
		if strings.Contains(l, "recovered from the failure of step") || strings.Contains(l, "resumed job "+job) {
			recovered = append(recovered, strings.TrimSpace(l))
		}
	}
	t.Logf("coordinators on recovery:\n%s", strings.Join(recovered, "\n"))
	if !slices.ContainsFunc(recovered, func(l string) bool {
		return strings.Contains(l, "recovered from the failure") && strings.Contains(l, victim)
	}) {
		t.Errorf("no coordinator logged recovering in-process from the loss of %s", victim)
	}

	last, doneAt := waitCommit(ctx, t, cli, keys, 12*time.Minute, fmt.Sprintf("step %d", steps),
		func(c etcdx.Commit) bool { return c.Step >= steps })
	t.Logf("step %d committed %.1f s after up (%.1f s since the test began)", last.Step, doneAt.Sub(upAt).Seconds(), time.Since(start).Seconds())

	// Every step committed once, in order, with fencing tokens that never
	// go back, and the last step's checkpoint listed.
	commits, err := etcdx.Commits(ctx, cli, keys)
	if err != nil {
		t.Fatal(err)
	}
	if err := etcdx.CheckSequence(commits); err != nil {
		t.Error(err)
	}
	if len(commits) != steps {
		t.Errorf("%d commits, want %d", len(commits), steps)
	}
	for i := 1; i < len(commits); i++ {
		if p, c := commits[i-1], commits[i]; c.LeaderRev < p.LeaderRev || c.Epoch < p.Epoch {
			t.Errorf("step %d (epoch %d, token %d) follows step %d (epoch %d, token %d): fencing went back", c.Step, c.Epoch, c.LeaderRev, p.Step, p.Epoch, p.LeaderRev)
		}
	}
	if last.Epoch < 3 {
		t.Errorf("final epoch %d: want 3 or more (the first plan and one per fault)", last.Epoch)
	}
	var ck coordinator.CheckpointManifest
	found, err := etcdx.GetJSON(ctx, cli, keys.Checkpoint(steps), &ck)
	if err != nil || !found {
		t.Errorf("checkpoint of step %d in etcd: found %v, %v", steps, found, err)
	}

	// What a user reads in `docker-compose logs`: a line per step and
	// the stage map of each plan.
	logs = c.mustCompose(ctx, queryTimeout, "logs", "--no-color", "coordinator-1", "coordinator-2")
	if !strings.Contains(logs, fmt.Sprintf("step %d/%d loss ", steps, steps)) {
		t.Errorf("no line for step %d in the coordinators' logs", steps)
	}
	if n := strings.Count(logs, "plan installed: stage 0: "); n < 3 {
		t.Errorf("%d stage maps in the coordinators' logs, want one per plan (3 or more)", n)
	}
	c.coordinatorsExited(ctx, time.Minute)
}

// TestComposeStaysUpUnderLoad saturates the host's cores with busy loops
// (twice as many plain shell loops as cores, at the containers' own
// priority, bounded in time) from before `up` until the compose job has
// trained, and checks
// that starvation is not taken for a fault: one leader throughout (every
// step committed under the same fencing token), one plan (no worker taken
// for lost), and both coordinators exiting 0 without a restart.
func TestComposeStaysUpUnderLoad(t *testing.T) {
	requireDocker(t)
	const loadSteps = 20
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	// The image first: building it is no part of the test.
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	testImage(t, ctx, root)
	// The load, from before `up` (election, registration and training
	// alike): bounded by `timeout` should the test die, and killed as
	// soon as the job is done.
	n := 2 * runtime.NumCPU()
	var loops []*exec.Cmd
	stopLoad := func() {
		for _, l := range loops {
			// The whole group: killing `timeout` alone would orphan
			// its busy child.
			_ = syscall.Kill(-l.Process.Pid, syscall.SIGKILL)
			_ = l.Wait()
		}
		loops = nil
	}
	t.Cleanup(stopLoad)
	for range n {
		l := exec.Command("timeout", "600", "sh", "-c", "while :; do :; done")
		l.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
		if err := l.Start(); err != nil {
			t.Fatal(err)
		}
		loops = append(loops, l)
	}
	t.Logf("%d busy loops started on %d cores", n, runtime.NumCPU())
	c, cli, keys, upAt := startCluster(t, ctx, loadSteps)
	last, doneAt := waitCommit(ctx, t, cli, keys, 6*time.Minute, fmt.Sprintf("step %d under load", loadSteps),
		func(c etcdx.Commit) bool { return c.Step >= loadSteps })
	stopLoad()
	t.Logf("step %d committed %.1f s after up, under load throughout", last.Step, doneAt.Sub(upAt).Seconds())

	commits, err := etcdx.Commits(ctx, cli, keys)
	if err != nil {
		t.Fatal(err)
	}
	if err := etcdx.CheckSequence(commits); err != nil {
		t.Error(err)
	}
	if len(commits) != loadSteps {
		t.Fatalf("%d commits, want %d", len(commits), loadSteps)
	}
	first := commits[0]
	for _, cm := range commits {
		if cm.LeaderRev != first.LeaderRev || cm.Epoch != first.Epoch {
			t.Errorf("step %d committed by fencing token %d on plan epoch %d; step %d by token %d on epoch %d: the load was taken for a fault",
				cm.Step, cm.LeaderRev, cm.Epoch, first.Step, first.LeaderRev, first.Epoch)
		}
	}
	c.coordinatorsExited(ctx, time.Minute)
	// What the coordinators said, for the record.
	var said []string
	for _, l := range strings.Split(c.mustCompose(ctx, 2*time.Minute, "logs", "--no-color", "coordinator-1", "coordinator-2"), "\n") {
		if strings.Contains(l, "leading job") || strings.Contains(l, "plan installed") || strings.Contains(l, "/20 loss") ||
			strings.Contains(l, "nothing to do") || strings.Contains(l, "campaign") {
			said = append(said, strings.TrimSpace(l))
		}
	}
	t.Logf("coordinators:\n%s", strings.Join(said, "\n"))
}
