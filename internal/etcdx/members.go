package etcdx

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net"
	"sort"
	"strconv"
	"strings"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

// Member is a worker's registration: what the coordinator needs to place
// stages on it and to reach it.
type Member struct {
	Name string `json:"name"`
	// Addr is the worker's gRPC address (host:port).
	Addr string `json:"addr"`
	// Capacity is the most stages the worker can hold; 0 means 1.
	Capacity int `json:"capacity,omitempty"`
	// Speed is the worker's measured compute speed in GFLOP/s, 0 if not
	// measured.
	Speed float64 `json:"speed,omitempty"`
	// Lease is the lease the key is bound to (filled when read).
	Lease int64 `json:"-"`
}

// Register writes m under the session's lease: the key vanishes when the
// worker stops renewing it. A worker that restarts under its old name
// replaces the old registration; the old lease no longer owns the key, so
// its expiry does not remove the new one.
func Register(ctx context.Context, s *concurrency.Session, k Keys, m Member) error {
	if err := ValidateWorkerName(m.Name); err != nil {
		return err
	}
	if err := CheckMember(m); err != nil {
		return fmt.Errorf("etcdx: %w", err)
	}
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	if _, err := s.Client().Put(ctx, k.Member(m.Name), string(b), clientv3.WithLease(s.Lease())); err != nil {
		return fmt.Errorf("etcdx: register worker %s in job %s: %w", m.Name, k.Job(), err)
	}
	return nil
}

// Members reads the current registrations, sorted by name, and the
// revision they were read at.
func Members(ctx context.Context, cli *clientv3.Client, k Keys) ([]Member, int64, error) {
	resp, err := cli.Get(ctx, k.MembersPrefix(), clientv3.WithPrefix())
	if err != nil {
		return nil, 0, fmt.Errorf("etcdx: read members of job %s: %w", k.Job(), err)
	}
	set := map[string]Member{}
	for _, kv := range resp.Kvs {
		if m, ok := decodeMember(k, kv.Key, kv.Value, kv.Lease); ok {
			set[m.Name] = m
		}
	}
	return sorted(set), resp.Header.Revision, nil
}

// Bounds on a registration: a worker writes a few dozen bytes, one
// stage or a few, and a speed in GFLOP/s far below these.
const (
	MaxMemberBytes = 1 << 10
	MaxCapacity    = 1024
	MaxSpeed       = 1e9
)

// decodeMember parses one registration. One that is not what a worker
// writes (see CheckMember) is ignored, counted and reported (SetWarnf),
// so a stray or forged key cannot stop or steer the coordinator.
func decodeMember(k Keys, key, val []byte, lease int64) (Member, bool) {
	name := strings.TrimPrefix(string(key), k.MembersPrefix())
	var m Member
	var why string
	switch {
	case len(val) > MaxMemberBytes:
		why = fmt.Sprintf("%d bytes, over the %d-byte limit", len(val), MaxMemberBytes)
	case json.Unmarshal(val, &m) != nil:
		why = "not a registration: " + quote(val)
	case m.Name != name:
		why = fmt.Sprintf("names worker %q under the key of %q", m.Name, name)
	default:
		if err := CheckMember(m); err != nil {
			why = err.Error()
		}
	}
	if why != "" {
		ignore(IgnoredMember, string(key), why)
		return Member{}, false
	}
	m.Lease = lease
	return m, true
}

// CheckMember reports what is wrong with a registration: the name must
// be a valid worker name, the address host:port with a port in 1..65535,
// the capacity within 0..MaxCapacity and the speed a finite number within
// 0..MaxSpeed.
func CheckMember(m Member) error {
	if err := ValidateWorkerName(m.Name); err != nil {
		return err
	}
	host, port, err := net.SplitHostPort(m.Addr)
	if err != nil {
		return fmt.Errorf("worker %s: address %q: %v", m.Name, m.Addr, err)
	}
	if p, err := strconv.Atoi(port); host == "" || err != nil || p < 1 || p > 65535 {
		return fmt.Errorf("worker %s: address %q: want host:port with a port in 1..65535", m.Name, m.Addr)
	}
	if m.Capacity < 0 || m.Capacity > MaxCapacity {
		return fmt.Errorf("worker %s: capacity %d outside 0..%d", m.Name, m.Capacity, MaxCapacity)
	}
	if math.IsNaN(m.Speed) || m.Speed < 0 || m.Speed > MaxSpeed {
		return fmt.Errorf("worker %s: speed %v GFLOP/s outside 0..%g", m.Name, m.Speed, MaxSpeed)
	}
	return nil
}

func sorted(set map[string]Member) []Member {
	out := make([]Member, 0, len(set))
	for _, m := range set {
		out = append(out, m)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// WatchMembers sends the full membership, sorted by name, now and after
// every change until ctx ends, then closes the channel. Only the latest
// snapshot is kept when the reader is slow. The watch resumes from the
// last seen revision + 1 when its stream breaks and re-reads the prefix
// when that revision has been compacted away.
func WatchMembers(ctx context.Context, cli *clientv3.Client, k Keys) <-chan []Member {
	return watchMembers(ctx, cli, k, nil, 0)
}

// watchMembers is WatchMembers resuming from a membership known at rev;
// a nil set reads the prefix first.
func watchMembers(ctx context.Context, cli *clientv3.Client, k Keys, set map[string]Member, rev int64) <-chan []Member {
	out := make(chan []Member, 1)
	go func() {
		defer close(out)
		publish := func(set map[string]Member) {
			snap := sorted(set)
			select { // drop a stale unread snapshot
			case <-out:
			default:
			}
			out <- snap
		}
		reread := func() bool {
			for ctx.Err() == nil {
				ms, r, err := Members(ctx, cli, k)
				if err == nil {
					set, rev = map[string]Member{}, r
					for _, m := range ms {
						set[m.Name] = m
					}
					publish(set)
					return true
				}
				sleepCtx(ctx, retryDelay)
			}
			return false
		}
		if set == nil {
			if !reread() {
				return
			}
		} else {
			publish(set)
		}
		for ctx.Err() == nil {
			wctx, cancel := context.WithCancel(ctx)
			wch := cli.Watch(clientv3.WithRequireLeader(wctx), k.MembersPrefix(), clientv3.WithPrefix(), clientv3.WithRev(rev+1))
			compacted := false
			for resp := range wch {
				if resp.CompactRevision != 0 || resp.Err() == rpctypes.ErrCompacted {
					compacted = true
					break
				}
				if resp.Err() != nil {
					break
				}
				for _, ev := range resp.Events {
					name := strings.TrimPrefix(string(ev.Kv.Key), k.MembersPrefix())
					if ev.Type == clientv3.EventTypeDelete {
						delete(set, name)
					} else if m, ok := decodeMember(k, ev.Kv.Key, ev.Kv.Value, ev.Kv.Lease); ok {
						set[name] = m
					} else {
						delete(set, name)
					}
				}
				if n := len(resp.Events); n > 0 {
					// resume after the last event seen, not the header
					// revision, so nothing between them is skipped
					rev = resp.Events[n-1].Kv.ModRevision
					publish(set)
				}
			}
			cancel()
			if ctx.Err() != nil {
				return
			}
			if compacted {
				if !reread() {
					return
				}
				continue
			}
			sleepCtx(ctx, retryDelay)
		}
	}()
	return out
}

// WaitMembers waits until at least n workers are registered and returns
// the first n by name.
func WaitMembers(ctx context.Context, cli *clientv3.Client, k Keys, n int) ([]Member, error) {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for ms := range WatchMembers(wctx, cli, k) {
		if len(ms) >= n {
			return ms[:n], nil
		}
	}
	return nil, fmt.Errorf("etcdx: waiting for %d workers in job %s: %w", n, k.Job(), ctx.Err())
}
