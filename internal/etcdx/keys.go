package etcdx

import (
	"strconv"
	"strings"

	"stagecoach/internal/naming"
)

// Root is the prefix under which every job keeps its keys.
const Root = "/stagecoach/"

// MaxJobLen bounds a job id so keys stay short.
const MaxJobLen = naming.MaxLen

// Keys builds the etcd keys of one job. The zero value is invalid; use
// NewKeys.
type Keys struct{ job string }

// NewKeys validates job and returns its key builder. A job id is 1 to 64
// characters from [A-Za-z0-9._-] and not "." or "..": anything else could
// escape the job's prefix or collide with another job's.
func NewKeys(job string) (Keys, error) {
	if err := ValidateJob(job); err != nil {
		return Keys{}, err
	}
	return Keys{job: job}, nil
}

// ValidateJob reports why job is not a usable job id.
func ValidateJob(job string) error { return validName("job id", job) }

// validName is the shared rule of internal/naming.
func validName(what, s string) error { return naming.Validate(what, s) }

// Job is the job id.
func (k Keys) Job() string { return k.job }

// Prefix is the job's prefix, ending in a slash: "/stagecoach/<job>/".
func (k Keys) Prefix() string { return Root + k.job + "/" }

// MembersPrefix is the prefix of worker registrations.
func (k Keys) MembersPrefix() string { return k.Prefix() + "members/" }

// Member is the registration key of worker name.
func (k Keys) Member(name string) string { return k.MembersPrefix() + name }

// ElectionPrefix is the prefix concurrency.Election campaigns under.
func (k Keys) ElectionPrefix() string { return k.Prefix() + "leader/" }

// PlanPrefix is the prefix of plan manifests.
func (k Keys) PlanPrefix() string { return k.Prefix() + "plan/" }

// Plan is the manifest key of plan epoch.
func (k Keys) Plan(epoch int64) string { return k.PlanPrefix() + pad(epoch) }

// Iteration holds the last committed step.
func (k Keys) Iteration() string { return k.Prefix() + "iteration" }

// CommitsPrefix is the prefix of the per-step commit records.
func (k Keys) CommitsPrefix() string { return k.Prefix() + "commits/" }

// Commit is the record of committed step.
func (k Keys) Commit(step int64) string { return k.CommitsPrefix() + pad(step) }

// CheckpointsPrefix is the prefix of checkpoint manifests.
func (k Keys) CheckpointsPrefix() string { return k.Prefix() + "checkpoints/" }

// Checkpoint is the manifest key of the checkpoint taken after step.
func (k Keys) Checkpoint(step int64) string { return k.CheckpointsPrefix() + pad(step) }

// RecoveriesPrefix is the prefix of the recent recovery records (a
// bounded log the coordinator keeps for `stagecoach status` and the live
// page).
func (k Keys) RecoveriesPrefix() string { return k.Prefix() + "recoveries/" }

// Recovery is the record of the recovery identified by id (its detection
// time in Unix nanoseconds, so key order is time order).
func (k Keys) Recovery(id int64) string { return k.RecoveriesPrefix() + pad(id) }

// pad renders n zero-padded to 20 digits so lexical order is numeric.
func pad(n int64) string {
	s := strconv.FormatInt(n, 10)
	if len(s) >= 20 {
		return s
	}
	return strings.Repeat("0", 20-len(s)) + s
}

// ValidateWorkerName reports why name cannot be a member key suffix.
func ValidateWorkerName(name string) error { return validName("worker name", name) }

// commitStep parses a commit record's key: the step, and false for any
// other key.
func (k Keys) commitStep(key string) (int64, bool) { return numbered(k.CommitsPrefix(), key) }

// PlanEpoch parses a plan manifest's key: the epoch, and false for any
// other key.
func (k Keys) PlanEpoch(key string) (int64, bool) { return numbered(k.PlanPrefix(), key) }

// numbered parses prefix + pad(n) for n >= 1: exactly 20 digits.
func numbered(prefix, key string) (int64, bool) {
	s, ok := strings.CutPrefix(key, prefix)
	if !ok || len(s) != 20 {
		return 0, false
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 1 || pad(n) != s {
		return 0, false
	}
	return n, true
}
