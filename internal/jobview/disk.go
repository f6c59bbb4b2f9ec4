package jobview

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"google.golang.org/protobuf/proto"
)

// ErrEtcdRunning means the data directory's database is locked: an etcd
// still serves it, and should be asked instead of its files.
var ErrEtcdRunning = errors.New("jobview: an etcd process holds the data directory")

// DiskSource reads the keyspace an etcd left in its data directory, for a
// job whose etcd is not running any more. It holds the newest version of
// every live key under a prefix, as etcd's backend last stored it; etcd
// commits its backend every 100 ms, so a killed etcd's last writes (still
// in its write-ahead log) may be missing. Leases cannot be timed offline:
// LeaseTTL reports -1 for both.
type DiskSource struct {
	kvs []KV // live keys, sorted
	rev int64
}

// dbPath is where an etcd data directory keeps its backend database.
func dbPath(dataDir string) string { return filepath.Join(dataDir, "member", "snap", "db") }

// OpenDisk reads every live key under prefix from the etcd data
// directory dataDir. It fails with ErrEtcdRunning when an etcd holds the
// database.
func OpenDisk(dataDir, prefix string) (*DiskSource, error) {
	path := dbPath(dataDir)
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("jobview: no etcd database in %s: %w", dataDir, err)
	}
	db, err := bolt.Open(path, 0o400, &bolt.Options{ReadOnly: true, Timeout: 500 * time.Millisecond})
	if errors.Is(err, berrors.ErrTimeout) {
		return nil, fmt.Errorf("%w (%s)", ErrEtcdRunning, path)
	}
	if err != nil {
		return nil, fmt.Errorf("jobview: open etcd database %s: %w", path, err)
	}
	defer db.Close()
	d := &DiskSource{}
	latest := map[string]*mvccpb.KeyValue{}
	err = db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte("key"))
		if b == nil {
			return fmt.Errorf("jobview: %s has no key bucket: not an etcd v3 database", path)
		}
		// Keys are revisions (8-byte main, '_', 8-byte sub, then 't'
		// for a deletion), in revision order.
		return b.ForEach(func(k, v []byte) error {
			if len(k) < 17 {
				return fmt.Errorf("jobview: %s: revision key of %d bytes", path, len(k))
			}
			main := int64(binary.BigEndian.Uint64(k[:8]))
			d.rev = max(d.rev, main)
			var kv mvccpb.KeyValue
			if err := proto.Unmarshal(v, &kv); err != nil {
				return fmt.Errorf("jobview: %s: revision %d: %w", path, main, err)
			}
			key := string(kv.Key)
			if !strings.HasPrefix(key, prefix) {
				return nil
			}
			if len(k) == 18 && k[17] == 't' {
				delete(latest, key)
				return nil
			}
			latest[key] = &kv
			return nil
		})
	})
	if err != nil {
		return nil, err
	}
	for _, kv := range latest {
		d.kvs = append(d.kvs, KV{Key: string(kv.Key), Value: kv.Value, CreateRev: kv.CreateRevision, ModRev: kv.ModRevision, Lease: kv.Lease})
	}
	sort.Slice(d.kvs, func(i, j int) bool { return d.kvs[i].Key < d.kvs[j].Key })
	return d, nil
}

// Get implements Source.
func (d *DiskSource) Get(_ context.Context, key string) (*KV, error) {
	i := sort.Search(len(d.kvs), func(i int) bool { return d.kvs[i].Key >= key })
	if i < len(d.kvs) && d.kvs[i].Key == key {
		kv := d.kvs[i]
		return &kv, nil
	}
	return nil, nil
}

// List implements Source.
func (d *DiskSource) List(_ context.Context, prefix string, limit int) ([]KV, error) {
	lo := sort.Search(len(d.kvs), func(i int) bool { return d.kvs[i].Key >= prefix })
	hi := lo
	for hi < len(d.kvs) && strings.HasPrefix(d.kvs[hi].Key, prefix) {
		hi++
	}
	if limit > 0 && hi-lo > limit {
		lo = hi - limit
	}
	return append([]KV(nil), d.kvs[lo:hi]...), nil
}

// LeaseTTL implements Source: unknown offline.
func (d *DiskSource) LeaseTTL(context.Context, int64) (int64, int64, error) { return -1, -1, nil }

// Revision implements Source: the newest revision stored.
func (d *DiskSource) Revision() int64 { return d.rev }
