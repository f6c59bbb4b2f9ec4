package faulttest

import (
	"context"
	"slices"
	"strings"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"

	"stagecoach/coordinator"
	"stagecoach/internal/jobview"
)

// recorded reads the recovery records the coordinator kept in etcd,
// oldest first.
func recorded(t *testing.T, e *env) []coordinator.Recovery {
	t.Helper()
	resp, err := e.cli.Get(context.Background(), e.keys.RecoveriesPrefix(), clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend))
	if err != nil {
		t.Fatal(err)
	}
	var out []coordinator.Recovery
	for _, kv := range resp.Kvs {
		var r coordinator.Recovery
		if err := jsonUnmarshal(kv.Value, &r); err != nil {
			t.Fatalf("%s: %v", kv.Key, err)
		}
		out = append(out, r)
	}
	return out
}

// checkRecorded checks that etcd holds a record of every recovery the run
// reported, as reported (its first commit stamped), and that `stagecoach
// status` (jobview) reads them back: what a person watching the job sees
// is what happened.
func checkRecorded(t *testing.T, e *env, sum *coordinator.Summary) {
	t.Helper()
	recs := recorded(t, e)
	if len(recs) != len(sum.Recoveries) {
		t.Fatalf("etcd records %d recoveries, the run reported %d: %+v", len(recs), len(sum.Recoveries), recs)
	}
	for i, want := range sum.Recoveries {
		got := recs[i]
		if got.Kind != want.Kind || got.Step != want.Step || got.Epoch != want.Epoch || !got.DetectedAt.Equal(want.DetectedAt) ||
			!slices.Equal(got.Lost, want.Lost) || !slices.Equal(got.Joined, want.Joined) || got.FromCheckpoint != want.FromCheckpoint ||
			!got.CommittedAt.Equal(want.CommittedAt) || got.CommittedAt.IsZero() {
			t.Errorf("recovery %d: etcd holds %+v, the run reported %+v", i, got, want)
		}
	}
	snap, err := jobview.Read(context.Background(), jobview.NewEtcdSource(e.cli), e.keys, jobview.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if len(snap.Recoveries) != len(recs) {
		t.Fatalf("status shows %d recoveries, etcd holds %d", len(snap.Recoveries), len(recs))
	}
	for i, r := range snap.Recoveries {
		if r.Kind != recs[i].Kind || r.Step != recs[i].Step || !slices.Equal(r.Lost, recs[i].Lost) || !slices.Equal(r.Vacant, recs[i].Vacant) ||
			r.CommittedAt == nil || !r.CommittedAt.Equal(recs[i].CommittedAt) {
			t.Errorf("status shows recovery %d as %+v, etcd holds %+v", i, r, recs[i])
		}
	}
	if c := snap.Committed; c == nil || int(c.Step) != len(sum.Steps)+int(sum.Steps[0].Step)-1 {
		t.Errorf("status shows committed %+v after a run ending at step %d", c, sum.Steps[len(sum.Steps)-1].Step)
	}
}

// checkTakeover checks that the new leader recorded its takeover of a job
// whose last committed step at the fault was last.
func checkTakeover(t *testing.T, e *env, leader string, last int64) {
	t.Helper()
	for _, r := range recorded(t, e) {
		if r.Kind == coordinator.KindTakeover && strings.Contains(r.Cause, leader) {
			if r.Step < 1 || r.Step > last+1 || r.FromCheckpoint != r.Step-1 || r.Replayed < 0 {
				t.Errorf("takeover record %+v after step %d", r, last)
			}
			return
		}
	}
	t.Errorf("no takeover by %s recorded: %+v", leader, recorded(t, e))
}
