// Package failpoint lets fault tests crash a real process at a named point
// of its work, where an outside kill -9 could only hit by luck (a
// checkpoint write of a small model lasts microseconds).
//
// Failpoints are read once from the environment variable
// STAGECOACH_FAILPOINTS, a comma-separated list of name=value pairs, for
// example "checkpoint-write=6". Unset (the normal case) every lookup is a
// map miss and nothing else happens.
package failpoint

import (
	"os"
	"strings"
	"sync"
	"syscall"
)

// EnvVar names the environment variable holding the failpoints.
const EnvVar = "STAGECOACH_FAILPOINTS"

// CheckpointWrite crashes a worker halfway through writing a checkpoint
// shard of the step given as its value.
const CheckpointWrite = "checkpoint-write"

// ComputeWrongShape makes a compute-serve backend answer its Nth Forward
// call (counted from 1 in the process) with an output one sequence short:
// a well-formed answer of the wrong shape, as a buggy backend would give.
// The value is "N", or "N:PATH" to arm it in one process of many: the
// first to create PATH.
const ComputeWrongShape = "compute-wrong-shape"

var (
	once   sync.Once
	points map[string]string
)

func load() {
	points = map[string]string{}
	for _, kv := range strings.Split(os.Getenv(EnvVar), ",") {
		if k, v, ok := strings.Cut(strings.TrimSpace(kv), "="); ok && k != "" {
			points[k] = v
		}
	}
}

// Value returns the value armed for name, if any.
func Value(name string) (string, bool) {
	once.Do(load)
	v, ok := points[name]
	return v, ok
}

// Crash ends the process at once with SIGKILL, as a power cut or the OOM
// killer would: no deferred function, no flush, no cleanup runs.
func Crash() {
	_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
	select {} // the signal is asynchronous; never return to the caller
}
