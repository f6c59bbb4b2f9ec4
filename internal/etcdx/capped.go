package etcdx

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// maxTxnDeletes keeps a capped write's transaction under etcd's default
// limit of 128 operations.
const maxTxnDeletes = 100

// PutCapped writes v as JSON under key, which must lie under prefix,
// fenced by leadership, and in the same transaction deletes the oldest
// keys under prefix (in key order) beyond keep, so that a log of small
// records stays bounded however long the job runs.
func (l *Leader) PutCapped(ctx context.Context, prefix, key string, v any, keep int) error {
	if !strings.HasPrefix(key, prefix) || keep < 1 {
		return fmt.Errorf("etcdx: capped write of %s under %s keeping %d: key outside prefix or nothing kept", key, prefix, keep)
	}
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("etcdx: encode %s: %w", key, err)
	}
	if len(b) > MaxValueBytes {
		return fmt.Errorf("etcdx: %s would hold %d bytes, over the %d-byte manifest limit", key, len(b), MaxValueBytes)
	}
	resp, err := l.Client().Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithKeysOnly(), clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend))
	if err != nil {
		return fmt.Errorf("etcdx: list %s: %w", prefix, err)
	}
	var others []string
	for _, kv := range resp.Kvs {
		if string(kv.Key) != key {
			others = append(others, string(kv.Key))
		}
	}
	ops := []clientv3.Op{clientv3.OpPut(key, string(b))}
	for i := 0; i < len(others)+1-keep && i < maxTxnDeletes; i++ {
		ops = append(ops, clientv3.OpDelete(others[i]))
	}
	_, err = l.Txn(ctx, nil, ops...)
	return err
}
