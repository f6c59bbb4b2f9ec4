// Package planner builds the plan a job runs, for every schedule family,
// as one pure function of a Snapshot: the cost model (or none), the
// members to plan on and, when the placement is fixed, their stages, the
// job's schedule and rules, the plan being replaced. One registry (Lookup)
// says what each family is (a classic scheduler generator or a SkipPipe
// variant) and what it supports (re-path, vacant stages, unequal stages,
// a cluster); callers branch on those capabilities, never on names.
//
// The coordinator (start, re-path, restore, rejoin, drift replan), the
// simulator's failure runs and `stagecoach sim` and `plan` all plan here.
// No etcd, no I/O, no clock: the coordinator maps its registered members
// to a Snapshot.
package planner
