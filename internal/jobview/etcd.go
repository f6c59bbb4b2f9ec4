package jobview

import (
	"context"
	"fmt"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// EtcdSource reads a running etcd. Its first read pins the revision every
// later read of the same EtcdSource sees; use a new one per snapshot.
type EtcdSource struct {
	cli *clientv3.Client
	rev int64
}

// NewEtcdSource reads through cli.
func NewEtcdSource(cli *clientv3.Client) *EtcdSource { return &EtcdSource{cli: cli} }

func (e *EtcdSource) opts(extra ...clientv3.OpOption) []clientv3.OpOption {
	if e.rev > 0 {
		extra = append(extra, clientv3.WithRev(e.rev))
	}
	return extra
}

func (e *EtcdSource) pin(resp *clientv3.GetResponse) {
	if e.rev == 0 {
		e.rev = resp.Header.Revision
	}
}

// Get implements Source.
func (e *EtcdSource) Get(ctx context.Context, key string) (*KV, error) {
	resp, err := e.cli.Get(ctx, key, e.opts()...)
	if err != nil {
		return nil, fmt.Errorf("jobview: read %s: %w", key, err)
	}
	e.pin(resp)
	if len(resp.Kvs) == 0 {
		return nil, nil
	}
	kv := resp.Kvs[0]
	return &KV{Key: string(kv.Key), Value: kv.Value, CreateRev: kv.CreateRevision, ModRev: kv.ModRevision, Lease: kv.Lease}, nil
}

// List implements Source.
func (e *EtcdSource) List(ctx context.Context, prefix string, limit int) ([]KV, error) {
	o := []clientv3.OpOption{clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByKey, clientv3.SortDescend)}
	if limit > 0 {
		o = append(o, clientv3.WithLimit(int64(limit)))
	}
	resp, err := e.cli.Get(ctx, prefix, e.opts(o...)...)
	if err != nil {
		return nil, fmt.Errorf("jobview: read %s: %w", prefix, err)
	}
	e.pin(resp)
	out := make([]KV, len(resp.Kvs))
	for i, kv := range resp.Kvs {
		// Newest first from etcd (so a limit keeps the last ones);
		// returned in key order.
		out[len(out)-1-i] = KV{Key: string(kv.Key), Value: kv.Value, CreateRev: kv.CreateRevision, ModRev: kv.ModRevision, Lease: kv.Lease}
	}
	return out, nil
}

// LeaseTTL implements Source.
func (e *EtcdSource) LeaseTTL(ctx context.Context, lease int64) (int64, int64, error) {
	if lease == 0 {
		return -1, -1, nil
	}
	resp, err := e.cli.TimeToLive(ctx, clientv3.LeaseID(lease))
	if err == rpctypes.ErrLeaseNotFound {
		return -1, -1, nil
	}
	if err != nil {
		return 0, 0, fmt.Errorf("jobview: time to live of lease %x: %w", lease, err)
	}
	return resp.TTL, resp.GrantedTTL, nil
}

// Revision implements Source.
func (e *EtcdSource) Revision() int64 { return e.rev }
