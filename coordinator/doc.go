// Package coordinator owns the control plane of a Stagecoach job: it keeps
// durable state in etcd, wins leadership, watches worker membership, places
// stages, asks the scheduler for a Plan, hands it to workers and commits
// finished iterations.
package coordinator
