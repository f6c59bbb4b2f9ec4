package etcdx

import (
	"context"
	"encoding/json"
	"fmt"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Commit records one finished iteration: after it the optimizer has
// applied Step steps.
type Commit struct {
	Step      int64   `json:"step"`
	Epoch     int64   `json:"epoch"`
	LeaderRev int64   `json:"leader_rev"`
	Loss      float64 `json:"loss"`
}

// Iteration reads the last committed step (zero Commit if none) and the
// key's mod revision, which CommitIteration compares against.
func Iteration(ctx context.Context, cli *clientv3.Client, k Keys) (Commit, int64, error) {
	resp, err := cli.Get(ctx, k.Iteration())
	if err != nil {
		return Commit{}, 0, fmt.Errorf("etcdx: read iteration of job %s: %w", k.Job(), err)
	}
	if len(resp.Kvs) == 0 {
		return Commit{}, 0, nil
	}
	var c Commit
	if err := json.Unmarshal(resp.Kvs[0].Value, &c); err != nil {
		return Commit{}, 0, fmt.Errorf("etcdx: %s holds %q: %w", k.Iteration(), resp.Kvs[0].Value, err)
	}
	return c, resp.Kvs[0].ModRevision, nil
}

// Committer commits iterations in sequence for a leader. It remembers the
// revision of the last commit it saw so each commit is conditional on
// nobody having committed in between: the committed sequence can have no
// gap (step must be last+1) and no duplicate (the step's record must not
// exist yet).
type Committer struct {
	l    *Leader
	last Commit
	rev  int64
}

// NewCommitter reads the committed iteration to continue from.
func NewCommitter(ctx context.Context, l *Leader) (*Committer, error) {
	c, rev, err := Iteration(ctx, l.Client(), l.keys)
	if err != nil {
		return nil, err
	}
	return &Committer{l: l, last: c, rev: rev}, nil
}

// Last is the last committed iteration.
func (c *Committer) Last() Commit { return c.last }

// Commit records next, which must be step Last().Step+1, in one fenced
// transaction, together with extra (for example the step's checkpoint
// manifest, so etcd lists a checkpoint exactly when its step is
// committed).
func (c *Committer) Commit(ctx context.Context, next Commit, extra ...clientv3.Op) error {
	if next.Step != c.last.Step+1 {
		return fmt.Errorf("etcdx: commit step %d after step %d would leave a gap or repeat", next.Step, c.last.Step)
	}
	next.LeaderRev = c.l.Rev()
	b, err := json.Marshal(next)
	if err != nil {
		return err
	}
	k := c.l.keys
	resp, err := c.l.Txn(ctx, []clientv3.Cmp{
		clientv3.Compare(clientv3.ModRevision(k.Iteration()), "=", c.rev),
		clientv3.Compare(clientv3.CreateRevision(k.Commit(next.Step)), "=", 0),
	}, append([]clientv3.Op{clientv3.OpPut(k.Iteration(), string(b)), clientv3.OpPut(k.Commit(next.Step), string(b))}, extra...)...)
	if err != nil {
		return fmt.Errorf("etcdx: commit step %d of job %s: %w", next.Step, k.Job(), err)
	}
	c.last, c.rev = next, resp.Header.Revision
	return nil
}

// Refresh re-reads the committed iteration. A commit that failed with a
// timeout may still have been applied by etcd (the proposal was in flight
// when the answer was lost); after Refresh, Last tells which.
func (c *Committer) Refresh(ctx context.Context) error {
	last, rev, err := Iteration(ctx, c.l.Client(), c.l.keys)
	if err != nil {
		return err
	}
	c.last, c.rev = last, rev
	return nil
}

// Commits reads every per-step commit record in step order.
func Commits(ctx context.Context, cli *clientv3.Client, k Keys) ([]Commit, error) {
	resp, err := cli.Get(ctx, k.CommitsPrefix(), clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend))
	if err != nil {
		return nil, fmt.Errorf("etcdx: read commits of job %s: %w", k.Job(), err)
	}
	out := make([]Commit, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		var c Commit
		if err := json.Unmarshal(kv.Value, &c); err != nil {
			return nil, fmt.Errorf("etcdx: %s holds %q: %w", kv.Key, kv.Value, err)
		}
		out = append(out, c)
	}
	return out, nil
}

// CheckSequence reports the first gap or duplicate in commits, which must
// run 1, 2, ..., n.
func CheckSequence(commits []Commit) error {
	for i, c := range commits {
		if c.Step != int64(i+1) {
			return fmt.Errorf("etcdx: commit #%d is step %d, want %d", i, c.Step, i+1)
		}
	}
	return nil
}

// PutJSON writes v as JSON under key, fenced by leadership. Manifests only:
// etcd values are capped at 1.5 MiB.
func (l *Leader) PutJSON(ctx context.Context, key string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("etcdx: encode %s: %w", key, err)
	}
	if len(b) > MaxValueBytes {
		return fmt.Errorf("etcdx: %s would hold %d bytes, over the %d-byte manifest limit", key, len(b), MaxValueBytes)
	}
	_, err = l.Txn(ctx, nil, clientv3.OpPut(key, string(b)))
	return err
}

// MaxValueBytes caps what Stagecoach stores in one etcd value, well under
// etcd's 1.5 MiB request limit.
const MaxValueBytes = 512 << 10

// GetJSON reads key into v; found is false when the key is absent.
func GetJSON(ctx context.Context, cli *clientv3.Client, key string, v any) (found bool, err error) {
	resp, err := cli.Get(ctx, key)
	if err != nil {
		return false, fmt.Errorf("etcdx: read %s: %w", key, err)
	}
	if len(resp.Kvs) == 0 {
		return false, nil
	}
	if err := json.Unmarshal(resp.Kvs[0].Value, v); err != nil {
		return true, fmt.Errorf("etcdx: %s: %w", key, err)
	}
	return true, nil
}
