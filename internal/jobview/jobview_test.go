package jobview_test

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"stagecoach/coordinator"
	"stagecoach/internal/etcdx"
	"stagecoach/internal/jobview"
	"stagecoach/internal/tlsx"
)

// job is a job's keys written through etcdx as the coordinator and the
// workers write them, with the coordinator's own record types.
type job struct {
	dir      string
	etcd     *etcdx.Embedded
	cli      *clientv3.Client
	keys     etcdx.Keys
	leader   *etcdx.Leader
	sessions []*concurrency.Session
	det      time.Time
}

func startJob(t *testing.T, tc *tlsxFiles) *job {
	t.Helper()
	ctx := context.Background()
	j := &job{dir: t.TempDir()}
	var err error
	ec := etcdx.EmbedConfig{Dir: j.dir}
	var cc *tls.Config
	if tc != nil {
		ec.TLS = tc.etcd
		if cc, err = tlsx.Load(tc.client); err != nil {
			t.Fatal(err)
		}
	}
	if j.etcd, err = etcdx.StartEmbedded(ctx, ec); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(j.etcd.Close)
	if j.cli, err = etcdx.DialTLS(ctx, j.etcd.Endpoints(), 0, cc); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { j.cli.Close() })
	if j.keys, err = etcdx.NewKeys("view"); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"w0", "w1", "w9"} {
		s, err := etcdx.NewSession(ctx, j.cli, 30)
		if err != nil {
			t.Fatal(err)
		}
		j.sessions = append(j.sessions, s)
		if err := etcdx.Register(ctx, s, j.keys, etcdx.Member{Name: name, Addr: "127.0.0.1:1" + name[1:]}); err != nil {
			t.Fatal(err)
		}
	}
	s, err := etcdx.NewSession(ctx, j.cli, 30)
	if err != nil {
		t.Fatal(err)
	}
	j.sessions = append(j.sessions, s)
	if j.leader, err = etcdx.Campaign(ctx, s, j.keys, "coord-a"); err != nil {
		t.Fatal(err)
	}
	plan := coordinator.PlanManifest{Epoch: 2, Schedule: "skippipe", Stages: 3, LeaderRev: j.leader.Rev(), Workers: []coordinator.PlanWorker{
		{Name: "w0", Addr: "127.0.0.1:10", Stages: []int{0}}, {Name: "w1", Addr: "127.0.0.1:11", Stages: []int{1}},
		{Name: "w5", Addr: "127.0.0.1:15", Stages: []int{1}, Replica: 1}}}
	if err := j.leader.PutJSON(ctx, j.keys.Plan(2), plan); err != nil {
		t.Fatal(err)
	}
	com, err := etcdx.NewCommitter(ctx, j.leader)
	if err != nil {
		t.Fatal(err)
	}
	for step := int64(1); step <= 5; step++ {
		var extra []clientv3.Op
		if step == 4 {
			b, _ := json.Marshal(coordinator.CheckpointManifest{Step: 4, Epoch: 2, Base: "/ck", Dir: "/ck/step-4", Files: []string{"a", "b"}})
			extra = append(extra, clientv3.OpPut(j.keys.Checkpoint(4), string(b)))
		}
		if err := com.Commit(ctx, etcdx.Commit{Step: step, Epoch: 2, Loss: 6 - float64(step)/10}, extra...); err != nil {
			t.Fatal(err)
		}
	}
	j.det = time.Date(2026, 12, 7, 0, 0, 3, 0, time.UTC)
	for i, rec := range []coordinator.Recovery{
		{Step: 3, Kind: "repath", Cause: "worker w2 lost", Lost: []string{"w2"}, Vacant: []int{2}, Epoch: 2, Workers: 3, DetectedAt: j.det, ResumedAt: j.det.Add(time.Second), RecoveryS: 1},
		{Step: 2, Kind: "restore", Cause: "x", Epoch: 1, Workers: 4, FromCheckpoint: 0, Replayed: 1, DetectedAt: j.det.Add(-time.Minute), ResumedAt: j.det.Add(-time.Minute), CommittedAt: j.det.Add(-time.Minute), ToCommitS: 0.5},
	} {
		if err := j.leader.PutCapped(ctx, j.keys.RecoveriesPrefix(), j.keys.Recovery(rec.DetectedAt.UnixNano()), rec, coordinator.RecoveriesKept); err != nil {
			t.Fatalf("recovery %d: %v", i, err)
		}
	}
	return j
}

// TestReadShowsWhatEtcdHolds reads a job from a running etcd and checks
// every field against what was written and what etcd says, then reads
// the same job from the data directory once etcd is stopped and gets the
// same snapshot (leases untimed, marked offline by the caller).
func TestReadShowsWhatEtcdHolds(t *testing.T) {
	ctx := context.Background()
	j := startJob(t, nil)
	s, err := jobview.Read(ctx, jobview.NewEtcdSource(j.cli), j.keys, jobview.Options{Losses: 3})
	if err != nil {
		t.Fatal(err)
	}
	if s.Job != "view" || s.Revision == 0 {
		t.Errorf("job %q at revision %d", s.Job, s.Revision)
	}
	if s.Leader == nil || s.Leader.Name != "coord-a" || s.Leader.FencingToken != j.leader.Rev() || s.Leader.TTLS <= 0 || s.Leader.TTLS > 30 || s.Leader.GrantedS != 30 {
		t.Errorf("leader %+v, want coord-a with token %d and a live lease", s.Leader, j.leader.Rev())
	}
	if c := s.Committed; c == nil || c.Step != 5 || c.Loss != 5.5 || c.Epoch != 2 || c.LeaderRev != j.leader.Rev() {
		t.Errorf("committed %+v, want step 5, loss 5.5", c)
	}
	if want := []jobview.LossPoint{{Step: 3, Loss: 5.7}, {Step: 4, Loss: 5.6}, {Step: 5, Loss: 5.5}}; !reflect.DeepEqual(s.Losses, want) {
		t.Errorf("losses %v, want %v", s.Losses, want)
	}
	if c := s.Checkpoint; c == nil || c.Step != 4 || c.Dir != "/ck/step-4" || c.Files != 2 {
		t.Errorf("checkpoint %+v", c)
	}
	p := s.Plan
	if p == nil || p.Epoch != 2 || p.Schedule != "skippipe" || p.Stages != 3 || !reflect.DeepEqual(p.Vacant, []int{2}) || len(p.Workers) != 3 {
		t.Fatalf("plan %+v", p)
	}
	// w5 is in the plan but not registered; w9 registered but standby.
	if !p.Workers[0].Registered || !p.Workers[1].Registered || p.Workers[2].Registered {
		t.Errorf("plan workers' registrations %+v", p.Workers)
	}
	if len(s.Members) != 3 {
		t.Fatalf("members %+v", s.Members)
	}
	for i, want := range []struct {
		name   string
		inPlan bool
		stages []int
	}{{"w0", true, []int{0}}, {"w1", true, []int{1}}, {"w9", false, []int{}}} {
		m := s.Members[i]
		lease := j.sessions[i].Lease()
		if m.Name != want.name || m.InPlan != want.inPlan || !reflect.DeepEqual(m.Stages, want.stages) || m.TTLS <= 0 || m.GrantedS != 30 || m.Lease != fmt.Sprintf("%x", int64(lease)) {
			t.Errorf("member %d: %+v, want %s (in plan %v, stages %v, lease %x)", i, m, want.name, want.inPlan, want.stages, lease)
		}
	}
	// Oldest first, whatever order they were written in.
	if len(s.Recoveries) != 2 || s.Recoveries[0].Kind != "restore" || s.Recoveries[1].Kind != "repath" ||
		!reflect.DeepEqual(s.Recoveries[1].Lost, []string{"w2"}) || !reflect.DeepEqual(s.Recoveries[1].Vacant, []int{2}) ||
		!s.Recoveries[1].DetectedAt.Equal(j.det) || s.Recoveries[1].CommittedAt != nil || s.Recoveries[0].CommittedAt == nil {
		t.Errorf("recoveries %+v", s.Recoveries)
	}

	// While etcd runs its database is locked.
	if _, err := jobview.OpenDisk(j.dir, j.keys.Prefix()); !errors.Is(err, jobview.ErrEtcdRunning) {
		t.Fatalf("reading a running etcd's files: %v, want ErrEtcdRunning", err)
	}
	for _, ss := range j.sessions {
		ss.Orphan()
	}
	j.cli.Close()
	j.etcd.Close()
	d, err := jobview.OpenDisk(j.dir, j.keys.Prefix())
	if err != nil {
		t.Fatal(err)
	}
	off, err := jobview.Read(ctx, d, j.keys, jobview.Options{Losses: 3})
	if err != nil {
		t.Fatal(err)
	}
	// Offline, leases cannot be timed; everything else is the same.
	live := *s
	live.Leader = ptr(*s.Leader)
	live.Leader.TTLS, live.Leader.GrantedS = -1, -1
	live.Members = append([]jobview.Member(nil), s.Members...)
	for i := range live.Members {
		live.Members[i].TTLS, live.Members[i].GrantedS = -1, -1
	}
	live.ReadAt, off.ReadAt = time.Time{}, time.Time{}
	if off.Revision < s.Revision {
		t.Errorf("disk revision %d before the live read's %d", off.Revision, s.Revision)
	}
	live.Revision, off.Revision = 0, 0
	if !reflect.DeepEqual(&live, off) {
		a, _ := json.Marshal(&live)
		b, _ := json.Marshal(off)
		t.Errorf("offline snapshot differs:\n live %s\n disk %s", a, b)
	}
}

// TestReadRejectsMalformedRecords: a record that does not parse is an
// error naming its key, not a silently empty view.
func TestReadRejectsMalformedRecords(t *testing.T) {
	ctx := context.Background()
	j := startJob(t, nil)
	for _, key := range []string{j.keys.Plan(3), j.keys.Iteration(), j.keys.Member("w0"), j.keys.Checkpoint(9), j.keys.Recovery(1)} {
		t.Run(key, func(t *testing.T) {
			old, err := j.cli.Get(ctx, key)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := j.cli.Put(ctx, key, "{not json"); err != nil {
				t.Fatal(err)
			}
			_, err = jobview.Read(ctx, jobview.NewEtcdSource(j.cli), j.keys, jobview.Options{})
			if err == nil || !strings.Contains(err.Error(), key) {
				t.Errorf("read with %s malformed: %v, want an error naming it", key, err)
			}
			if len(old.Kvs) > 0 {
				_, err = j.cli.Put(ctx, key, string(old.Kvs[0].Value), clientv3.WithLease(clientv3.LeaseID(old.Kvs[0].Lease)))
			} else {
				_, err = j.cli.Delete(ctx, key)
			}
			if err != nil {
				t.Fatal(err)
			}
		})
	}
	if _, err := jobview.Read(ctx, jobview.NewEtcdSource(j.cli), j.keys, jobview.Options{Losses: jobview.MaxLosses + 1}); err == nil {
		t.Error("more loss points than MaxLosses were read")
	}
}

// TestLiveServesPageAndSnapshot serves the live page over plain HTTP and
// checks the page, its assets and the JSON it polls.
func TestLiveServesPageAndSnapshot(t *testing.T) {
	j := startJob(t, nil)
	live := jobview.NewLive(j.cli, j.keys)
	live.SetTimeline(5, []jobview.WorkerAction{
		{Worker: "w1", TimedAction: jobview.TimedAction{Action: "F0@s1", Stage: 1, StartS: 0.01, EndS: 0.02}},
		{Worker: "w0", TimedAction: jobview.TimedAction{Action: "F0@s0", Stage: 0, StartS: 0, EndS: 0.01}},
	})
	srv := httptest.NewServer(live)
	defer srv.Close()
	for path, want := range map[string]string{"/": `<script src="app.js">`, "/app.js": "api/job", "/style.css": ".stage"} {
		body, ctype := get(t, srv.Client(), srv.URL+path)
		if !strings.Contains(body, want) {
			t.Errorf("%s (%s) lacks %q", path, ctype, want)
		}
	}
	body, ctype := get(t, srv.Client(), srv.URL+"/api/job")
	if !strings.HasPrefix(ctype, "application/json") {
		t.Errorf("/api/job is %s", ctype)
	}
	var s jobview.Snapshot
	if err := json.Unmarshal([]byte(body), &s); err != nil {
		t.Fatal(err)
	}
	if s.Committed == nil || s.Committed.Step != 5 || len(s.Losses) != 5 || s.Timeline == nil || s.Timeline.Step != 5 ||
		len(s.Timeline.Workers) != 2 || s.Timeline.Workers[0].Worker != "w0" || s.Timeline.SpanS != 0.02 {
		t.Errorf("snapshot %s", body)
	}
}

// TestLiveOverTLSRequiresClientCertificate serves the page with the
// cluster's certificates: HTTPS, and no page without a client
// certificate of the cluster CA.
func TestLiveOverTLSRequiresClientCertificate(t *testing.T) {
	dir := t.TempDir()
	if _, err := tlsx.Generate(dir, []string{"etcd", "coordinator", "viewer"}, 0); err != nil {
		t.Fatal(err)
	}
	other := t.TempDir()
	if _, err := tlsx.Generate(other, []string{"stranger"}, 0); err != nil {
		t.Fatal(err)
	}
	j := startJob(t, &tlsxFiles{etcd: tlsx.FilesFor(dir, "etcd"), client: tlsx.FilesFor(dir, "coordinator")})
	serverTLS, err := tlsx.Load(tlsx.FilesFor(dir, "coordinator"))
	if err != nil {
		t.Fatal(err)
	}
	srv, err := jobview.Serve("127.0.0.1:0", jobview.NewLive(j.cli, j.keys), serverTLS)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	if !strings.HasPrefix(srv.URL(), "https://") {
		t.Fatalf("URL %s", srv.URL())
	}
	client := func(f tlsx.Files, withCert bool) *http.Client {
		c, err := tlsx.Load(f)
		if err != nil {
			t.Fatal(err)
		}
		if !withCert {
			c.Certificates = nil
		}
		// Trust the server whatever CA the client has, so that only the
		// client certificate can make the handshake fail.
		c.InsecureSkipVerify = true
		return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: c}}
	}
	body, _ := get(t, client(tlsx.FilesFor(dir, "viewer"), true), srv.URL()+"api/job")
	if !strings.Contains(body, `"step":5`) {
		t.Errorf("with the cluster's certificate: %s", body)
	}
	for name, c := range map[string]*http.Client{
		"no client certificate":           client(tlsx.FilesFor(dir, "viewer"), false),
		"another CA's client certificate": client(tlsx.FilesFor(other, "stranger"), true),
	} {
		resp, err := c.Get(srv.URL() + "api/job")
		if err == nil {
			resp.Body.Close()
			t.Errorf("%s: got %s, want the handshake refused", name, resp.Status)
		}
	}
	plain := &http.Client{Timeout: 10 * time.Second}
	if resp, err := plain.Get(strings.Replace(srv.URL(), "https", "http", 1) + "api/job"); err == nil {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if strings.Contains(string(b), `"job"`) {
			t.Errorf("plain HTTP served the snapshot: %s", b)
		}
	}
}

type tlsxFiles struct{ etcd, client tlsx.Files }

func get(t *testing.T, c *http.Client, url string) (body, ctype string) {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s: %s", url, resp.Status, b)
	}
	return string(b), resp.Header.Get("Content-Type")
}

func ptr[T any](v T) *T { return &v }

// TestReadPlanBounds: a manifest without a stage count (written before
// it was recorded) shows the stages its workers hold; an absurd one is
// refused before anything is allocated for it.
func TestReadPlanBounds(t *testing.T) {
	ctx := context.Background()
	j := startJob(t, nil)
	put := func(v string) {
		t.Helper()
		if _, err := j.cli.Put(ctx, j.keys.Plan(3), v); err != nil {
			t.Fatal(err)
		}
	}
	put(`{"epoch":3,"schedule":"gpipe","workers":[{"name":"w0","stages":[0]},{"name":"w1","stages":[2]}]}`)
	s, err := jobview.Read(ctx, jobview.NewEtcdSource(j.cli), j.keys, jobview.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if s.Plan.Stages != 3 || !reflect.DeepEqual(s.Plan.Vacant, []int{1}) {
		t.Errorf("plan without a stage count: %d stages, vacant %v; want 3, [1]", s.Plan.Stages, s.Plan.Vacant)
	}
	put(`{"epoch":3,"schedule":"gpipe","stages":4000000000,"workers":[]}`)
	if _, err := jobview.Read(ctx, jobview.NewEtcdSource(j.cli), j.keys, jobview.Options{}); err == nil || !strings.Contains(err.Error(), "stages") {
		t.Errorf("a plan of 4e9 stages: %v, want refused", err)
	}
}
