package etcdx

import (
	"fmt"
	"sync/atomic"
)

// What the coordinator reads from etcd it did not necessarily write:
// without etcd auth any client can write any key, and even with it a
// worker writes its own registration. So readers here check every record
// against what its legitimate writer would have written and ignore the
// rest: an ignored record is counted (Ignored, by kind) and reported to
// the function given to SetWarnf, and never stops the job.

// Kinds of ignored records.
const (
	// IgnoredMember: a registration whose key, size, name, address,
	// capacity or speed is not what a worker writes.
	IgnoredMember = "member"
	// IgnoredIteration: an iteration key no leader's commit wrote.
	IgnoredIteration = "iteration"
	// IgnoredCommit: a per-step commit record no leader's commit wrote.
	IgnoredCommit = "commit"
	// IgnoredPlan: a key under the plan prefix that names no epoch a
	// leader could have reached.
	IgnoredPlan = "plan"
)

var ignoredMembers, ignoredIterations, ignoredCommits, ignoredPlans atomic.Uint64

func counter(kind string) *atomic.Uint64 {
	switch kind {
	case IgnoredMember:
		return &ignoredMembers
	case IgnoredIteration:
		return &ignoredIterations
	case IgnoredCommit:
		return &ignoredCommits
	case IgnoredPlan:
		return &ignoredPlans
	}
	return nil
}

// IgnoredKinds lists the kinds Ignored counts.
var IgnoredKinds = []string{IgnoredMember, IgnoredIteration, IgnoredCommit, IgnoredPlan}

// Ignored is how many records of kind this process ignored.
func Ignored(kind string) uint64 {
	if c := counter(kind); c != nil {
		return c.Load()
	}
	return 0
}

var warnf atomic.Pointer[func(format string, args ...any)]

// SetWarnf sets where this process reports ignored records (nil: nowhere).
// It is process-wide, like the counters, because the records are read
// deep inside watches that have no logger of their own.
func SetWarnf(f func(format string, args ...any)) {
	if f == nil {
		warnf.Store(nil)
		return
	}
	warnf.Store(&f)
}

// ignore counts a record of kind at key as ignored and reports why.
func ignore(kind, key, why string) {
	if c := counter(kind); c != nil {
		c.Add(1)
	}
	if f := warnf.Load(); f != nil {
		(*f)("etcd: ignoring %s record %s: %s", kind, key, why)
	}
}

// quote shows at most the first 120 bytes of an untrusted value.
func quote(b []byte) string {
	const max = 120
	if len(b) > max {
		return fmt.Sprintf("%q... (%d bytes)", b[:max], len(b))
	}
	return fmt.Sprintf("%q", b)
}
