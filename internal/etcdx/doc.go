// Package etcdx is Stagecoach's thin layer over etcd: an embedded
// single-node server for local runs and tests, clients and sessions with
// an explicit lease TTL, the key layout of a job, lease-bound worker
// membership with a watch that survives compaction and reconnects, and
// leader election whose every write is fenced by the leader's election
// revision, the etcd users and roles that confine each job's processes to
// their own keys (SetupAuth), and checks that make readers ignore records
// their legitimate writer could not have written (forged registrations,
// iteration and commit records, plan keys), counting and reporting them.
//
// Key layout, one prefix per job so that jobs sharing an etcd never see
// each other's keys:
//
//	/stagecoach/<job>/members/<worker>   lease-bound registration (JSON Member)
//	/stagecoach/<job>/leader/<lease>     election keys (concurrency.Election)
//	/stagecoach/<job>/plan/<epoch>       plan manifest (JSON, small)
//	/stagecoach/<job>/iteration          last committed step (JSON Commit)
//	/stagecoach/<job>/commits/<step>     one record per committed step
//	/stagecoach/<job>/checkpoints/<step> checkpoint manifest (JSON)
//	/stagecoach/<job>/recoveries/<time>  recent recoveries (JSON, capped)
//
// Numbers in keys are zero-padded to 20 digits so that lexical order is
// numeric order.
package etcdx
