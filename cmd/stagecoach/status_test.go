package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"stagecoach/internal/etcdx"
	"stagecoach/internal/jobview"
	"stagecoach/internal/tlsx"
)

// startUp starts `stagecoach up` in the background and returns a
// function that stops it (SIGTERM) and waits for it.
func startUp(t *testing.T, args ...string) (stop func() string) {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, append([]string{"up"}, args...)...)
	cmd.Env = append(os.Environ(), "STAGECOACH_TEST_MAIN=1")
	var errb syncBuf
	cmd.Stderr = &errb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	stopped := false
	stop = func() string {
		if !stopped {
			stopped = true
			_ = cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-done:
			case <-time.After(30 * time.Second):
				_ = cmd.Process.Kill()
				<-done
				t.Errorf("up did not stop within 30 s of SIGTERM")
			}
		}
		return errb.String()
	}
	t.Cleanup(func() { stop() })
	return stop
}

// syncBuf is a bytes.Buffer written by one goroutine and read by another.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// waitUntil polls ok every 100 ms until it holds or d passes.
func waitUntil(t *testing.T, d time.Duration, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, d)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestStatusAndLivePageOfRunningUp runs a real `stagecoach up` (worker
// processes, embedded etcd, gRPC over loopback) with --http-addr and,
// while it trains: reads `stagecoach status --out` and checks every field
// against what etcd holds at the revision status read; loads the live page
// in headless Chromium and checks that it shows a committed step with its
// loss and the stage map. After up is stopped, status --out shows the job
// as not running, read from the etcd data it left.
func TestStatusAndLivePageOfRunningUp(t *testing.T) {
	if testing.Short() {
		t.Skip("starts worker processes")
	}
	corpus := upCorpus(t)
	dir := t.TempDir()
	out := filepath.Join(dir, "run")
	stop := startUp(t, "--workers", "3", "--steps", "100000", "--layers", "3", "--dim", "16", "--heads", "2", "--ctx", "16",
		"--microbatches", "3", "--microbatch-size", "2", "--corpus", corpus, "--checkpoint-every", "5", "--ttl", "2",
		"--http-addr", "127.0.0.1:0", "--out", out, "--json")
	var st *upState
	waitUntil(t, 60*time.Second, "up.json names the live page", func() bool {
		var err error
		st, err = readUpState(out)
		return err == nil && st.LiveURL != ""
	})
	ctx := context.Background()
	cli, err := etcdx.Dial(ctx, st.Endpoints, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	keys, err := etcdx.NewKeys("up")
	if err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 60*time.Second, "step 6 committed", func() bool {
		c, _, err := etcdx.Iteration(ctx, cli, keys)
		return err == nil && c.Step >= 6
	})

	stdout, errOut, code := runCLI(t, dir, "status", "--out", out, "--json")
	if code != 0 {
		t.Fatalf("status exited %d: %s", code, errOut)
	}
	var s jobview.Snapshot
	if err := json.Unmarshal([]byte(stdout), &s); err != nil {
		t.Fatalf("status --json: %v\n%s", err, stdout)
	}
	checkAgainstEtcd(t, cli, keys, &s)
	if s.Offline != "" || s.Committed.Step < 6 || len(s.Members) != 3 || s.Plan == nil || len(s.Plan.Workers) != 3 {
		t.Errorf("status of a running up: %s", stdout)
	}
	table, errOut, code := runCLI(t, dir, "status", "--etcd", strings.Join(st.Endpoints, ","), "--job", "up")
	if code != 0 {
		t.Fatalf("status --etcd exited %d: %s", code, errOut)
	}
	for _, want := range []string{"job         up (running", fmt.Sprintf("fencing token %d", s.Leader.FencingToken), "epoch 1: gpipe, 3 workers, 3 stages", "w2      2"} {
		if !strings.Contains(table, want) {
			t.Errorf("status table lacks %q:\n%s", want, table)
		}
	}

	table, _, code = runCLI(t, dir, "status", "--etcd", strings.Join(st.Endpoints, ","), "--job", "no-such-job")
	if code != 0 || !strings.Contains(table, "etcd holds nothing under /stagecoach/no-such-job/: is the job id right?") {
		t.Errorf("status of an unknown job exited %d:\n%s", code, table)
	}
	if _, errOut, code := runCLI(t, dir, "status", "--etcd", strings.Join(st.Endpoints, ","), "--job", "a/b"); code != 2 || !strings.Contains(errOut, "job id") {
		t.Errorf("status --job a/b exited %d: %s", code, errOut)
	}
	if _, errOut, code := runCLI(t, dir, "status", "--out", filepath.Join(dir, "nothing")); code != 2 || !strings.Contains(errOut, "not the --out of a 'stagecoach up'") {
		t.Errorf("status --out of an empty directory exited %d: %s", code, errOut)
	}

	checkLivePage(t, st.LiveURL, cli, keys)

	errOut = stop()
	if !strings.Contains(errOut, "serving the live page on "+st.LiveURL) {
		t.Errorf("up did not log the live page's address:\n%s", errOut[max(0, len(errOut)-2000):])
	}
	gone, cancel := context.WithTimeout(ctx, 2*time.Second)
	last, _, err := etcdx.Iteration(gone, cli, keys)
	cancel()
	if err == nil {
		t.Fatalf("etcd still answers after up stopped (step %d)", last.Step)
	}
	stdout, errOut, code = runCLI(t, dir, "status", "--out", out, "--json")
	if code != 0 {
		t.Fatalf("status of a stopped up exited %d: %s", code, errOut)
	}
	var off jobview.Snapshot
	if err := json.Unmarshal([]byte(stdout), &off); err != nil {
		t.Fatal(err)
	}
	if off.Offline == "" || !strings.Contains(off.Offline, "not running") || off.Committed == nil || off.Committed.Step < s.Committed.Step ||
		off.Leader != nil || len(off.Members) != 0 || off.Plan == nil || off.Plan.Epoch != s.Plan.Epoch {
		t.Errorf("status of a stopped up (leader resigned, workers deregistered): %s", stdout)
	}
	table, _, _ = runCLI(t, dir, "status", "--out", out)
	if !strings.Contains(table, "NOT RUNNING") {
		t.Errorf("status table of a stopped up:\n%s", table)
	}
}

// checkAgainstEtcd compares a status snapshot with what etcd holds at the
// revision it was read at.
func checkAgainstEtcd(t *testing.T, cli *clientv3.Client, k etcdx.Keys, s *jobview.Snapshot) {
	t.Helper()
	ctx := context.Background()
	at := clientv3.WithRev(s.Revision)
	get := func(key string, opts ...clientv3.OpOption) *clientv3.GetResponse {
		resp, err := cli.Get(ctx, key, append(opts, at)...)
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	var c etcdx.Commit
	if r := get(k.Iteration()); len(r.Kvs) != 1 || json.Unmarshal(r.Kvs[0].Value, &c) != nil {
		t.Fatalf("no iteration at revision %d", s.Revision)
	}
	if s.Committed == nil || s.Committed.Step != c.Step || s.Committed.Loss != c.Loss || s.Committed.LeaderRev != c.LeaderRev {
		t.Errorf("status shows committed %+v, etcd holds %+v", s.Committed, c)
	}
	r := get(k.ElectionPrefix(), clientv3.WithFirstCreate()...)
	if len(r.Kvs) != 1 || s.Leader == nil || s.Leader.FencingToken != r.Kvs[0].CreateRevision || s.Leader.Name != string(r.Kvs[0].Value) ||
		s.Leader.Lease != strconv.FormatInt(r.Kvs[0].Lease, 16) {
		t.Errorf("status shows leader %+v, etcd holds %v", s.Leader, r.Kvs)
	}
	if s.Leader != nil && s.Leader.FencingToken != c.LeaderRev {
		t.Errorf("leader's token %d, last commit's %d", s.Leader.FencingToken, c.LeaderRev)
	}
	r = get(k.MembersPrefix(), clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend))
	if len(r.Kvs) != len(s.Members) {
		t.Fatalf("status shows %d members, etcd holds %d", len(s.Members), len(r.Kvs))
	}
	for i, kv := range r.Kvs {
		m := s.Members[i]
		if k.Member(m.Name) != string(kv.Key) || m.Lease != strconv.FormatInt(kv.Lease, 16) || m.TTLS < 0 || m.TTLS > 2 || m.GrantedS != 2 {
			t.Errorf("status shows member %+v, etcd holds %s under lease %x", m, kv.Key, kv.Lease)
		}
	}
	var plan struct {
		Epoch   int64 `json:"epoch"`
		Workers []struct {
			Name   string `json:"name"`
			Stages []int  `json:"stages"`
		} `json:"workers"`
	}
	if r := get(k.PlanPrefix(), clientv3.WithLastKey()...); len(r.Kvs) != 1 || json.Unmarshal(r.Kvs[0].Value, &plan) != nil {
		t.Fatal("no plan")
	}
	if s.Plan == nil || s.Plan.Epoch != plan.Epoch {
		t.Errorf("status shows plan %+v, etcd holds epoch %d", s.Plan, plan.Epoch)
	}
	for _, w := range plan.Workers {
		for _, m := range s.Members {
			if m.Name == w.Name && (!m.InPlan || fmt.Sprint(m.Stages) != fmt.Sprint(w.Stages)) {
				t.Errorf("status shows %+v, the plan gives %s stages %v", m, w.Name, w.Stages)
			}
		}
	}
	var ck struct {
		Step int64 `json:"step"`
	}
	if r := get(k.CheckpointsPrefix(), clientv3.WithLastKey()...); len(r.Kvs) != 1 || json.Unmarshal(r.Kvs[0].Value, &ck) != nil {
		t.Fatal("no checkpoint listed")
	}
	if s.Checkpoint == nil || s.Checkpoint.Step != ck.Step || ck.Step%5 != 0 {
		t.Errorf("status shows checkpoint %+v, etcd lists step %d", s.Checkpoint, ck.Step)
	}
}

// chromium finds Debian's chromium; without it the browser test skips,
// unless STAGECOACH_REQUIRE_CHROMIUM=1 (CI) makes that a failure.
func chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("STAGECOACH_REQUIRE_CHROMIUM") == "1" {
		t.Fatal("chromium is not installed and STAGECOACH_REQUIRE_CHROMIUM=1 (apt-get install chromium)")
	}
	t.Skip("chromium is not installed (apt-get install chromium); set STAGECOACH_REQUIRE_CHROMIUM=1 to fail instead")
	return ""
}

var (
	domStep  = regexp.MustCompile(`id="step">(\d+)<`)
	domLoss  = regexp.MustCompile(`id="loss">([0-9.]+)<`)
	domState = regexp.MustCompile(`id="state" class="pill (\w+)">`)
)

// checkLivePage loads url in headless Chromium until the page shows a
// committed step (bounded: 2 minutes), then checks it against etcd.
func checkLivePage(t *testing.T, url string, cli *clientv3.Client, k etcdx.Keys) {
	t.Helper()
	bin := chromium(t)
	ctx := context.Background()
	deadline := time.Now().Add(2 * time.Minute)
	for attempt := 1; ; attempt++ {
		before, _, err := etcdx.Iteration(ctx, cli, k)
		if err != nil {
			t.Fatal(err)
		}
		cctx, cancel := context.WithTimeout(ctx, time.Minute)
		// --virtual-time-budget lets the page's scripts run and its
		// fetch complete before the DOM is printed.
		cmd := exec.CommandContext(cctx, bin, "--headless", "--no-sandbox", "--disable-gpu", "--user-data-dir="+t.TempDir(),
			"--virtual-time-budget=3000", "--dump-dom", url)
		dom, err := cmd.Output()
		cancel()
		if err != nil {
			t.Fatalf("chromium --dump-dom %s: %v", url, err)
		}
		m := domStep.FindSubmatch(dom)
		if m == nil || string(m[1]) == "0" {
			if time.Now().After(deadline) {
				t.Fatalf("after %d loads the page shows no committed step:\n%s", attempt, dom)
			}
			continue
		}
		step, _ := strconv.ParseInt(string(m[1]), 10, 64)
		after, _, err := etcdx.Iteration(ctx, cli, k)
		if err != nil {
			t.Fatal(err)
		}
		if step < before.Step || step > after.Step {
			t.Errorf("page shows step %d; etcd's last committed step was %d before the load and %d after", step, before.Step, after.Step)
		}
		var c etcdx.Commit
		if ok, err := etcdx.GetJSON(ctx, cli, k.Commit(step), &c); err != nil || !ok {
			t.Fatalf("page shows step %d, which etcd has no record of (%v)", step, err)
		}
		if l := domLoss.FindSubmatch(dom); l == nil || string(l[1]) != strconv.FormatFloat(c.Loss, 'f', 4, 64) {
			t.Errorf("page shows loss %q for step %d, etcd holds %v", l, step, c.Loss)
		}
		if s := domState.FindSubmatch(dom); s == nil || string(s[1]) != "running" {
			t.Errorf("page state %q, want running", s)
		}
		for _, w := range []string{"w0", "w1", "w2"} {
			if !bytes.Contains(dom, []byte(`<div class="name">`+w+`</div>`)) {
				t.Errorf("stage map lacks worker %s", w)
			}
		}
		if !bytes.Contains(dom, []byte("<rect")) {
			t.Errorf("the iteration timeline draws no action")
		}
		t.Logf("the live page showed step %d (etcd: %d before the load, %d after) on load %d", step, before.Step, after.Step, attempt)
		return
	}
}

// TestStatusAndLivePageOverTLS runs a real `up --tls-dir`: status --out
// finds the job with the coordinator's certificate from that directory,
// and the live page is served over HTTPS to a client certificate of the
// cluster CA only.
func TestStatusAndLivePageOverTLS(t *testing.T) {
	if testing.Short() {
		t.Skip("starts worker processes")
	}
	corpus := upCorpus(t)
	dir := t.TempDir()
	out, certs := filepath.Join(dir, "run"), filepath.Join(dir, "certs")
	startUp(t, "--workers", "2", "--steps", "100000", "--layers", "2", "--dim", "16", "--heads", "2", "--ctx", "16",
		"--microbatches", "2", "--microbatch-size", "2", "--corpus", corpus, "--ttl", "2", "--tls-dir", certs,
		"--http-addr", "127.0.0.1:0", "--out", out, "--json")
	var st *upState
	waitUntil(t, 60*time.Second, "up.json names the live page", func() bool {
		var err error
		st, err = readUpState(out)
		return err == nil && st.LiveURL != ""
	})
	if !strings.HasPrefix(st.LiveURL, "https://") || st.TLSDir != certs {
		t.Fatalf("up.json: %+v", st)
	}
	var s jobview.Snapshot
	waitUntil(t, 60*time.Second, "status shows a committed step", func() bool {
		stdout, errOut, code := runCLI(t, dir, "status", "--out", out, "--json")
		if code != 0 {
			t.Fatalf("status --out of a TLS up exited %d: %s", code, errOut)
		}
		if err := json.Unmarshal([]byte(stdout), &s); err != nil {
			t.Fatal(err)
		}
		return s.Committed != nil && s.Committed.Step > 0
	})
	if s.Leader == nil || len(s.Members) != 2 {
		t.Errorf("status over TLS: %+v", s)
	}
	// Without TLS flags and without --out, etcd refuses the client.
	if _, _, code := runCLI(t, dir, "status", "--etcd", strings.Join(st.Endpoints, ","), "--job", "up", "--timeout", "3s"); code == 0 {
		t.Error("status without a certificate read a TLS etcd")
	}
	get := func(withCert bool) error {
		c, err := tlsx.Load(tlsx.FilesFor(certs, "w0"))
		if err != nil {
			t.Fatal(err)
		}
		if !withCert {
			c.Certificates = nil
		}
		hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: c}}
		resp, err := hc.Get(st.LiveURL + "api/job")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		var live jobview.Snapshot
		if err := json.NewDecoder(resp.Body).Decode(&live); err != nil || live.Committed == nil {
			t.Errorf("the page's snapshot over HTTPS: %v %+v", err, live)
		}
		return nil
	}
	if err := get(true); err != nil {
		t.Errorf("with a certificate of the cluster CA: %v", err)
	}
	if err := get(false); err == nil {
		t.Error("the page was served to a client without a certificate")
	}
}

func TestStatusAndHTTPAddrBadInputExitTwo(t *testing.T) {
	for _, args := range [][]string{
		{"up", "--http-addr", "8080"},
		{"coordinator", "--job", "j", "--http-addr", "127.0.0.1:99999"},
		{"status"},
		{"status", "--job", "j"},
		{"status", "--etcd", "127.0.0.1:1", "--out", "x"},
		{"status", "--etcd", "127.0.0.1:1", "--job", "j", "--timeout", "0s"},
	} {
		_, errOut, code := runCLI(t, t.TempDir(), args...)
		if code != 2 {
			t.Errorf("%v: exit %d, want 2 (%s)", args, code, errOut)
		}
	}
}
