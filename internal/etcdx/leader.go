package etcdx

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

// ErrDeposed means the leader key this process won no longer exists: its
// session expired or it resigned, and another coordinator may lead.
var ErrDeposed = errors.New("etcdx: no longer the leader")

// ErrConflict means a fenced write's own precondition failed while the
// writer was still leader (for example a commit that would leave a gap).
var ErrConflict = errors.New("etcdx: write precondition failed")

// ErrSessionExpired means a campaign ended because its session's lease
// expired before it won.
var ErrSessionExpired = errors.New("etcdx: session expired")

const retryDelay = 200 * time.Millisecond

// Leader is a won election. Rev is the fencing token: it only grows from
// one leader to the next, workers reject commands carrying a smaller one,
// and every write through Txn succeeds only while the leader key created
// at Rev still exists.
type Leader struct {
	keys Keys
	sess *concurrency.Session
	elec *concurrency.Election
	// key and rev are copied at the win: Resign clears the election's.
	key string
	rev int64
	// won is a revision at which the leader key was the election's
	// lowest: every earlier leader's key was gone, so no write of theirs
	// can carry a later revision. Records written after it are ours.
	won int64
	// attempts are the commit records this leader tried to write, by
	// step, so that a record found later can be told ours (a commit
	// whose answer was lost) from one somebody else wrote.
	mu       sync.Mutex
	attempts map[int64]string
	// done closes when the lease is gone for good (Lifeline).
	done <-chan struct{}
}

// Campaign blocks until this session leads job k, ctx ends or the session
// expires. concurrency.Election.Campaign does not notice its session
// expiring, so the session is watched alongside it.
func Campaign(ctx context.Context, s *concurrency.Session, k Keys, value string) (*Leader, error) {
	// The election adds "/<lease>" to the name it is given: name it
	// without ElectionPrefix's trailing slash so the keys are
	// <job>/leader/<lease>, under ElectionPrefix.
	e := concurrency.NewElection(s, strings.TrimSuffix(k.ElectionPrefix(), "/"))
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-s.Done():
			cancel()
		case <-cctx.Done():
		}
	}()
	if err := e.Campaign(cctx, value); err != nil {
		select {
		case <-s.Done():
			return nil, fmt.Errorf("etcdx: campaign for job %s: %w", k.Job(), ErrSessionExpired)
		default:
		}
		return nil, fmt.Errorf("etcdx: campaign for job %s: %w", k.Job(), err)
	}
	l := &Leader{keys: k, sess: s, elec: e, key: e.Key(), rev: e.Rev(), done: Lifeline(s), attempts: map[int64]string{}}
	// The session may have died between winning and here; a leader key
	// that is already gone must not be reported as a win.
	won, err := l.check(ctx)
	if err != nil {
		return nil, err
	}
	l.won = won
	return l, nil
}

// Rev is the fencing token: the creation revision of our leader key.
func (l *Leader) Rev() int64 { return l.rev }

// Keys is the job's key builder.
func (l *Leader) Keys() Keys { return l.keys }

// Client is the etcd client the leader writes through.
func (l *Leader) Client() *clientv3.Client { return l.sess.Client() }

// Done closes when the leader's lease is gone (see Lifeline: a keepalive
// the client dropped during an etcd leader change does not count): from
// then on every fenced write fails and the process must stop giving
// orders.
func (l *Leader) Done() <-chan struct{} { return l.done }

// guard is the fencing comparison: our leader key still exists with the
// creation revision we won at.
func (l *Leader) guard() clientv3.Cmp {
	return clientv3.Compare(clientv3.CreateRevision(l.key), "=", l.rev)
}

// Check returns ErrDeposed unless our leader key still exists.
func (l *Leader) Check(ctx context.Context) error {
	_, err := l.check(ctx)
	return err
}

// check is Check, also returning the revision etcd answered at.
func (l *Leader) check(ctx context.Context) (int64, error) {
	resp, err := l.Client().Txn(ctx).If(l.guard()).Commit()
	if err != nil {
		return 0, fmt.Errorf("etcdx: check leadership of job %s: %w", l.keys.Job(), err)
	}
	if !resp.Succeeded {
		return 0, ErrDeposed
	}
	return resp.Header.Revision, nil
}

// Txn applies ops when cmps hold and we are still the leader. It returns
// ErrDeposed when leadership is lost and ErrConflict when only cmps failed.
func (l *Leader) Txn(ctx context.Context, cmps []clientv3.Cmp, ops ...clientv3.Op) (*clientv3.TxnResponse, error) {
	all := append([]clientv3.Cmp{l.guard()}, cmps...)
	resp, err := l.Client().Txn(ctx).If(all...).Then(ops...).Commit()
	if err != nil {
		return nil, fmt.Errorf("etcdx: fenced write in job %s: %w", l.keys.Job(), err)
	}
	if resp.Succeeded {
		return resp, nil
	}
	if err := l.Check(ctx); err != nil {
		return nil, err
	}
	return nil, ErrConflict
}

// Resign gives up leadership so a standby can win at once instead of after
// the lease TTL.
func (l *Leader) Resign(ctx context.Context) error { return l.elec.Resign(ctx) }

func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}
