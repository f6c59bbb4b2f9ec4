// Package coordinator owns the control plane of a Stagecoach job: it keeps
// durable state in etcd, wins leadership, watches worker membership, places
// stages, asks the scheduler for a Plan, hands it to workers and commits
// finished iterations.
//
// One run of Coordinator.Run:
//
//  1. Campaign for /stagecoach/<job>/leader (etcdx.Campaign). The election
//     revision is the fencing token sent in every command's Fence; every
//     etcd write is a transaction guarded by the leader key still existing
//     at that revision, and losing the session cancels everything.
//  2. A job that already committed steps (a previous leader's) resumes:
//     every shard is reset, the newest checkpoint etcd lists is loaded
//     with its data position, and the committed steps after it are
//     replayed without being committed again. A finished job is refused.
//  3. Wait for the workers to register, build and validate the Plan (the
//     scheduler owns placement and schedule choice), store its JSON on disk
//     by content hash and a small manifest under plan/<epoch>.
//  4. Configure every worker, then per step: draw the microbatches' token
//     windows exactly as the single-process trainer does, RunIteration on
//     every worker concurrently, sum the per-tensor gradient squares in
//     canonical order for the global norm (so the clip scale is the
//     reference's, bit for bit), Step every worker with that scale and the
//     scheduled learning rate, then commit the step in etcd. A step is
//     committed only after every worker applied it, and the commit refuses
//     gaps and duplicates.
//  5. Summarise: losses, tokens/s, the time split between the workers'
//     programs, the optimizer and control, the measured timeline of the
//     last step and a simulation of the same plan against a cost model
//     calibrated from the measured action times.
//
// Failures (recover.go): a lost worker (lapsed lease, failed RPC or
// stream, deadline) ends the iteration; families that can re-path
// (SkipPipe) retry it around the worker, other schedules restore every shard from the last checkpoint and
// replay, always under a new epoch; workers that register later join at an
// iteration boundary. Commits retry across an etcd leader change after
// reading back whether the failed attempt landed.
//
// The package is mechanism only: what a Plan means lives in scheduler,
// which plan to build in planner (every plan the coordinator installs, at
// start, re-path, restore, rejoin and drift replan, comes from
// planner.Plan over a snapshot of the registered members), recovery
// decisions in policy, the model in model, the worker in worker.
package coordinator
