package etcdx

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"

	"go.etcd.io/etcd/api/v3/mvccpb"
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
//
// It trusts a commit only if the leader it names could have written it
// (see trustedPair): a commit is one fenced transaction putting the
// iteration key and the step's record, byte for byte the same, so both
// carry one mod revision, a committed step's record is not rewritten
// after later commits, and the leader revision it names is older than the
// record. Since a
// leader's writes are fenced by its key, nothing written after this
// leader won (Leader.won) can be another leader's: such records are
// trusted only if they are this leader's own attempts. Anything else is
// ignored (counted, reported, see SetWarnf) and overwritten by the next
// commit. Without etcd auth this stops forgeries that do not mimic a
// whole commit transaction of a past leader; with auth only the job's
// coordinators can write these keys at all.
type Committer struct {
	l    *Leader
	last Commit
	// rev is the iteration key's mod revision as last read or written
	// (0: absent), which the next commit compares.
	rev int64
	// committed is the revision the last trusted commit was written at:
	// a committed step's record is not rewritten after it.
	committed int64
	// over is the mod revision of an untrusted record that sits where
	// the next commit's record goes (0: none): the commit overwrites it
	// instead of requiring the key to be absent.
	over int64
	// base is the step the job started from (NewCommitterAfter): its
	// commits run from base+1.
	base int64
}

// NewCommitter reads the committed iteration to continue from. When the
// iteration key is not a trusted commit, it continues from the end of the
// longest run of trusted commit records from step 1.
func NewCommitter(ctx context.Context, l *Leader) (*Committer, error) {
	return NewCommitterAfter(ctx, l, 0)
}

// NewCommitterAfter is NewCommitter for a job that starts from the state
// after step base (a checkpoint it was initialised from) instead of step
// 0: its first commit is step base+1, and with nothing committed Last is
// step base. A job whose trusted commits end before base is refused.
func NewCommitterAfter(ctx context.Context, l *Leader, base int64) (*Committer, error) {
	if base < 0 {
		return nil, fmt.Errorf("etcdx: job %s starts after step %d", l.keys.Job(), base)
	}
	c := &Committer{l: l, base: base, last: Commit{Step: base}}
	it, rec, err := c.readPair(ctx)
	if err != nil {
		return nil, err
	}
	if it == nil {
		c.rev = 0
	} else {
		c.rev = it.ModRevision
	}
	if it != nil {
		last, why := c.trustedPair(it, rec)
		if why == "" && base > 0 && last.Step <= base {
			return nil, fmt.Errorf("etcdx: job %s committed step %d, not after step %d it is to start from: use a new job id", l.keys.Job(), last.Step, base)
		}
		if why == "" {
			c.last, c.committed = last, it.ModRevision
			return c, c.checkNext(ctx)
		}
		ignore(IgnoredIteration, string(it.Key), why)
	}
	if c.last, c.committed, err = c.trustedRun(ctx); err != nil {
		return nil, err
	}
	if it == nil && c.last.Step > base {
		ignore(IgnoredIteration, l.keys.Iteration(), fmt.Sprintf("absent while commit records run to step %d", c.last.Step))
	}
	return c, c.checkNext(ctx)
}

// Last is the last committed iteration.
func (c *Committer) Last() Commit { return c.last }

// Commit records next, which must be step Last().Step+1, in one fenced
// transaction, together with extra (for example the step's checkpoint
// manifest, so etcd lists a checkpoint exactly when its step is
// committed). When the transaction's conditions fail because of a record
// this leader does not trust (a forgery) or because an earlier attempt of
// this very commit landed with its answer lost, it re-reads and tries
// again, a few times at most.
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
	c.l.attempt(next.Step, string(b))
	for try := 0; ; try++ {
		slot := clientv3.Compare(clientv3.CreateRevision(k.Commit(next.Step)), "=", 0)
		if c.over != 0 {
			slot = clientv3.Compare(clientv3.ModRevision(k.Commit(next.Step)), "=", c.over)
		}
		resp, err := c.l.Txn(ctx, []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(k.Iteration()), "=", c.rev), slot},
			append([]clientv3.Op{clientv3.OpPut(k.Iteration(), string(b)), clientv3.OpPut(k.Commit(next.Step), string(b))}, extra...)...)
		if err == nil {
			c.last, c.rev, c.committed, c.over = next, resp.Header.Revision, resp.Header.Revision, 0
			return nil
		}
		if !errors.Is(err, ErrConflict) || try == 3 {
			return fmt.Errorf("etcdx: commit step %d of job %s: %w", next.Step, k.Job(), err)
		}
		if rerr := c.Refresh(ctx); rerr != nil {
			return fmt.Errorf("etcdx: commit step %d of job %s: %w (re-reading: %w)", next.Step, k.Job(), err, rerr)
		}
		switch {
		case c.last.Step == next.Step:
			return nil // an earlier attempt landed (Refresh trusts only ours)
		case c.last.Step != next.Step-1:
			return fmt.Errorf("etcdx: commit step %d of job %s: step %d is committed: %w", next.Step, k.Job(), c.last.Step, ErrConflict)
		}
	}
}

// Refresh re-reads the committed iteration. A commit that failed with a
// timeout may still have been applied by etcd (the proposal was in flight
// when the answer was lost); after Refresh, Last tells which. An
// iteration record this leader did not write is ignored: Last stays, and
// the next commit overwrites the record.
func (c *Committer) Refresh(ctx context.Context) error {
	it, rec, err := c.readPair(ctx)
	if err != nil {
		return err
	}
	switch {
	case it == nil:
		if c.rev != 0 {
			ignore(IgnoredIteration, c.l.keys.Iteration(), fmt.Sprintf("deleted; step %d stays the last committed", c.last.Step))
		}
		c.rev = 0
	case it.ModRevision == c.rev:
	default:
		last, why := c.trustedPair(it, rec)
		if why == "" && last.Step >= c.last.Step {
			c.last, c.rev, c.committed = last, it.ModRevision, it.ModRevision
			break
		}
		if why == "" {
			why = fmt.Sprintf("step %d is older than the committed step %d", last.Step, c.last.Step)
		}
		ignore(IgnoredIteration, string(it.Key), why)
		c.rev = it.ModRevision
	}
	return c.checkNext(ctx)
}

// Record is the commit record of step, which must be committed already
// (at most Last().Step); ok is false when it is absent or not trusted
// (ignored, counted and reported).
func (c *Committer) Record(ctx context.Context, step int64) (_ Commit, ok bool, _ error) {
	key := c.l.keys.Commit(step)
	if step <= c.base || step > c.last.Step {
		return Commit{}, false, fmt.Errorf("etcdx: step %d is not committed (last %d)", step, c.last.Step)
	}
	resp, err := c.l.Client().Get(ctx, key)
	if err != nil {
		return Commit{}, false, fmt.Errorf("etcdx: read %s: %w", key, err)
	}
	if len(resp.Kvs) == 0 {
		ignore(IgnoredCommit, key, fmt.Sprintf("absent though step %d is committed", c.last.Step))
		return Commit{}, false, nil
	}
	r, why := c.trustedRecord(resp.Kvs[0], step)
	if why == "" && resp.Kvs[0].ModRevision > c.committed {
		why = fmt.Sprintf("rewritten at revision %d, after step %d was committed at %d", resp.Kvs[0].ModRevision, c.last.Step, c.committed)
	}
	if why != "" {
		ignore(IgnoredCommit, key, why)
		return Commit{}, false, nil
	}
	return r, true, nil
}

// readPair reads the iteration key and, at the same revision, the commit
// record of the step it names (nil when either is absent or unreadable).
func (c *Committer) readPair(ctx context.Context) (it, rec *mvccpb.KeyValue, err error) {
	k := c.l.keys
	resp, err := c.l.Client().Get(ctx, k.Iteration())
	if err != nil {
		return nil, nil, fmt.Errorf("etcdx: read iteration of job %s: %w", k.Job(), err)
	}
	if len(resp.Kvs) == 0 {
		return nil, nil, nil
	}
	it = resp.Kvs[0]
	var cm Commit
	if json.Unmarshal(it.Value, &cm) != nil || cm.Step < 1 {
		return it, nil, nil
	}
	r, err := c.l.Client().Get(ctx, k.Commit(cm.Step), clientv3.WithRev(resp.Header.Revision))
	if err != nil {
		return nil, nil, fmt.Errorf("etcdx: read commit record of step %d of job %s: %w", cm.Step, k.Job(), err)
	}
	if len(r.Kvs) > 0 {
		rec = r.Kvs[0]
	}
	return it, rec, nil
}

// trustedPair checks an iteration key and the record of its step; why
// says what is wrong, empty when they are a trusted commit.
func (c *Committer) trustedPair(it, rec *mvccpb.KeyValue) (Commit, string) {
	var cm Commit
	if len(it.Value) > maxCommitBytes || json.Unmarshal(it.Value, &cm) != nil {
		return cm, "not a commit: " + quote(it.Value)
	}
	if rec == nil {
		return cm, fmt.Sprintf("names step %d, which has no commit record", cm.Step)
	}
	if !bytes.Equal(rec.Value, it.Value) || rec.ModRevision != it.ModRevision {
		return cm, fmt.Sprintf("differs from the record of step %d or was not written with it", cm.Step)
	}
	return c.trustedRecord(rec, cm.Step)
}

// trustedRecord checks the commit record kv of step (see Committer).
func (c *Committer) trustedRecord(kv *mvccpb.KeyValue, step int64) (Commit, string) {
	var cm Commit
	switch {
	case len(kv.Value) > maxCommitBytes || json.Unmarshal(kv.Value, &cm) != nil:
		return cm, "not a commit: " + quote(kv.Value)
	case cm.Step != step:
		return cm, fmt.Sprintf("says step %d under the key of step %d", cm.Step, step)
	case cm.LeaderRev <= 0 || cm.LeaderRev >= kv.ModRevision:
		return cm, fmt.Sprintf("names leader revision %d, not one before the record (written at %d)", cm.LeaderRev, kv.ModRevision)
	case kv.ModRevision > c.l.won:
		// Written during this leader's term: only its own attempts.
		if !c.l.ownRecord(step, kv.Value, cm.LeaderRev) {
			return cm, fmt.Sprintf("written at revision %d, after leader %d won, but not by it", kv.ModRevision, c.l.Rev())
		}
	case cm.LeaderRev >= c.l.Rev():
		return cm, fmt.Sprintf("names leader revision %d, not one before this leader's %d", cm.LeaderRev, c.l.Rev())
	}
	return cm, ""
}

// trustedRun is the last commit of the longest run of trusted commit
// records from step base+1 (Commit{Step: base} when there is none), each in its step's key, written after the one
// before it by the same or a later leader, and before every record of a
// later step (a record rewritten after later steps were committed ends
// the run before it); and the revision it was written at.
func (c *Committer) trustedRun(ctx context.Context) (Commit, int64, error) {
	k := c.l.keys
	resp, err := c.l.Client().Get(ctx, k.CommitsPrefix(), clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend))
	if err != nil {
		return Commit{}, 0, fmt.Errorf("etcdx: read commits of job %s: %w", k.Job(), err)
	}
	type rec struct {
		c   Commit
		mod int64
	}
	var run []rec
	after := int64(math.MaxInt64) // the earliest revision of a record past the run
	for _, kv := range resp.Kvs {
		step, ok := k.commitStep(string(kv.Key))
		if !ok {
			ignore(IgnoredCommit, string(kv.Key), "not a commit record's key")
			continue
		}
		if step <= c.base {
			ignore(IgnoredCommit, string(kv.Key), fmt.Sprintf("step %d, not after step %d the job starts from", step, c.base))
			continue
		}
		if step != c.base+int64(len(run))+1 || after != math.MaxInt64 {
			after = min(after, kv.ModRevision)
			continue
		}
		cm, why := c.trustedRecord(kv, step)
		if why == "" && len(run) > 0 && (kv.ModRevision <= run[len(run)-1].mod || cm.LeaderRev < run[len(run)-1].c.LeaderRev) {
			why = "written before the record of the step before it, or by an older leader"
		}
		if why != "" {
			ignore(IgnoredCommit, string(kv.Key), why)
			after = min(after, kv.ModRevision)
			continue
		}
		run = append(run, rec{cm, kv.ModRevision})
	}
	for len(run) > 0 && run[len(run)-1].mod > after {
		last := run[len(run)-1]
		ignore(IgnoredCommit, k.Commit(last.c.Step), fmt.Sprintf("written at revision %d, after a record of a later step (at %d)", last.mod, after))
		run = run[:len(run)-1]
	}
	if len(run) == 0 {
		return Commit{Step: c.base}, 0, nil
	}
	return run[len(run)-1].c, run[len(run)-1].mod, nil
}

// checkNext looks at the key the next commit's record goes to. This
// leader's own record there is a commit whose answer was lost (the
// iteration key written with it may have been overwritten since): it is
// adopted, and the key after it looked at. Any other record there is no
// commit (a commit writes the iteration key with it), so it is ignored
// and the next commit overwrites it.
func (c *Committer) checkNext(ctx context.Context) error {
	c.over = 0
	for {
		key := c.l.keys.Commit(c.last.Step + 1)
		resp, err := c.l.Client().Get(ctx, key)
		if err != nil {
			return fmt.Errorf("etcdx: read %s: %w", key, err)
		}
		if len(resp.Kvs) == 0 {
			return nil
		}
		kv := resp.Kvs[0]
		if cm, why := c.trustedRecord(kv, c.last.Step+1); why == "" && kv.ModRevision > c.l.won {
			c.last, c.committed = cm, kv.ModRevision
			continue
		}
		ignore(IgnoredCommit, key, fmt.Sprintf("present though step %d is the last committed", c.last.Step))
		c.over = kv.ModRevision
		return nil
	}
}

// maxCommitBytes bounds a commit record; real ones are under 100 bytes.
const maxCommitBytes = 1 << 10

// attemptWindow is how many steps back a leader remembers its commit
// records; a record of its term older than that is trusted when it names
// this leader's revision.
const attemptWindow = 4096

// attempt remembers the record this leader tries to commit for step.
func (l *Leader) attempt(step int64, rec string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.attempts[step] = rec
	delete(l.attempts, step-attemptWindow)
}

// ownRecord tells whether rec, written during this leader's term, is one
// it attempted for step.
func (l *Leader) ownRecord(step int64, rec []byte, named int64) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if a, ok := l.attempts[step]; ok {
		return a == string(rec)
	}
	return named == l.rev && len(l.attempts) > 0 && step < l.minAttempt()
}

// minAttempt is the oldest step remembered; call with mu held.
func (l *Leader) minAttempt() int64 {
	m := int64(-1)
	for s := range l.attempts {
		if m < 0 || s < m {
			m = s
		}
	}
	return m
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

// MaxEpoch bounds a plan epoch: one epoch per plan a leader installs
// never gets near it, so a key beyond it is a forgery (and the next
// epoch cannot overflow).
const MaxEpoch = 1 << 53

// LastPlanEpoch is the highest plan epoch listed for job k (0: none),
// read from the keys, not the manifests: a key that is no epoch, or one
// beyond MaxEpoch, is ignored (counted, reported).
func LastPlanEpoch(ctx context.Context, cli *clientv3.Client, k Keys) (int64, error) {
	resp, err := cli.Get(ctx, k.PlanPrefix(), clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return 0, fmt.Errorf("etcdx: read plan epochs of job %s: %w", k.Job(), err)
	}
	var last int64
	for _, kv := range resp.Kvs {
		e, ok := k.PlanEpoch(string(kv.Key))
		switch {
		case !ok:
			ignore(IgnoredPlan, string(kv.Key), "not a plan epoch's key")
		case e > MaxEpoch:
			ignore(IgnoredPlan, string(kv.Key), fmt.Sprintf("epoch %d beyond the limit of %d", e, int64(MaxEpoch)))
		default:
			last = max(last, e)
		}
	}
	return last, nil
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
