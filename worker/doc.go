// Package worker owns one pipeline worker: a gRPC server that holds its
// stages, runs its program from the Plan through the scheduler's Machine,
// streams activations and gradients to its peers and steps its
// optimizer.
//
// The worker is the runtime; what computes a stage is a compute backend
// (Config.Backend, package compute; the built-in Go model, compute/builtin,
// by default). The worker drives every held stage through compute.Stage:
// forward, loss, backward (split when the backend declares it), gradients
// for the all-reduce, sums of squares, the optimizer step, and the state
// its checkpoints hold.
//
// # Driving a worker (the coordinator's side)
//
// Under mutual TLS only the job's coordinator certificate may call the
// Worker service and only the job's workers may send tensors, each under
// its own plan index (authz.go; PermissionDenied otherwise).
//
// Every request carries a Fence {job, leader_rev, epoch}. The job must be
// the worker's Config.Job (else PermissionDenied). With Config.Leader (the
// job's election in etcd) a control request's leader_rev must be the
// current leader's: below it, or a leader admitted before and gone, is a
// deposed leader (FailedPrecondition); anything else is forged
// (PermissionDenied) and never adopted. Peer tensors below the highest
// admitted leader_rev are a deposed leader's: FailedPrecondition. The
// epoch must equal the one of the last Configure (older:
// FailedPrecondition; newer: FailedPrecondition until Configure for it).
// An iteration still running when the election names another leader
// ends as deposed (FailedPrecondition), so a leader paused or cut off
// mid-iteration cannot hold the worker from its successor.
//
//  1. Configure{fence, plan_json (scheduler JSON), worker (index in the
//     plan), peers (Peer address of every plan worker, by index),
//     peer_names (every plan worker's name, by index; required under TLS),
//     model_json (a marshalled model.TrainConfig; model and optim are
//     used; an optional "backend" names the compute backend the job
//     needs, and a worker computing with another refuses the Configure
//     with InvalidArgument), seed (overrides model.seed when non-zero),
//     link_shaping_yaml
//     (optional cluster YAML, package costmodel: emulated latency and bandwidth on every
//     outgoing link, workers matched to nodes by the plan's Worker.Node)}.
//     Stages whose layer range and model config did not change keep their
//     trained weights across a reconfigure; fresh ones reset the applied
//     step to 0 (LoadCheckpoint to resume). fresh rebuilds every held
//     stage from the seed and resets the applied step to 0 (a recovery
//     rolling back to before the first checkpoint).
//  2. RunIteration{fence, iteration, data}: iteration is 1-based and must
//     be the applied step + 1. data must hold every microbatch the worker
//     embeds (origin Forward) or computes the loss of, as Samples windows
//     of ctx+1 tokens; extra microbatches are ignored. Run it on all
//     workers in parallel. The reply has the losses this worker computed,
//     per-action timings (seconds from its iteration start, plus the
//     absolute start), and tensor_sum_squares for the stages it is replica
//     0 of. For the trainer's exact global norm sum tensor_sum_squares over
//     all workers in ascending key order, then sqrt.
//  3. Step{fence, iteration, clip_scale (model.ClipFactor, a float32 sent
//     as double), lr (OptimConfig.LRAt(iteration))} on every worker. A
//     step is applied at most once: a repeat gets AlreadyExists, a step
//     without completed gradients FailedPrecondition.
//  4. SaveCheckpoint / LoadCheckpoint{fence, dir, step, shards}: dir
//     relative to Config.CheckpointRoot (default "checkpoints"; an
//     absolute dir must lie under the root, else PermissionDenied), files
//     <dir>/step-<8 digits>/shard-<stage>.safetensors in the model's
//     checkpoint layout. Save wants step == applied step (0 means that)
//     and returns each file's size and SHA-256 in shards; Load wants
//     those back in shards for every stage it holds (InvalidArgument
//     without), verifies each file against them before parsing and sets
//     the applied step. A missing file is NotFound, one that does not
//     match or parse DataLoss, and a failed load changes nothing.
//
// A failed RunIteration leaves parameters untouched (no Step is possible
// for it). Retry it under a new epoch (Configure again), so no tensor of
// the failed attempt can be mistaken for one of the retry.
//
// A failure of the compute backend (compute.ErrBackend: it died, hung or
// answered something impossible) fails the RPC with Aborted, like a lost
// peer, naming the backend. The worker then reports itself unhealthy
// (Status Unavailable, health service NOT_SERVING) until an iteration
// succeeds again, so the coordinator's recovery counts it lost and
// restores without it. A Step or LoadCheckpoint the backend fails part
// way may leave stages disagreeing: only a checkpoint restore repairs it.
//
// # Exactness
//
// Actions run in program order on the stages, which is the model's
// ordering contract for GPipe, 1F1B, interleaved and zero-bubble plans:
// with the built-in backend and one replica per stage, losses, gradient
// norms, weights and optimizer moments equal model.Trainer's bit for bit.
// A backend without a split backward (the built-in one) runs the full
// backward for BackwardInput, and BackwardWeight is a no-op. Nor can the
// worker overlap: an Overlapped pair runs its forward, then its backward
// (and reports them as two timings).
// All-reduce rules: see allreduce.go.
//
// # Concurrency
//
// Control RPCs run one at a time. RunIteration's goroutine is the only
// owner of the Machine, the stages and the tensor store; Peer streams only
// validate tensors and queue them in a bounded mailbox (back-pressure
// reaches the sender through gRPC flow control), and sends go through a
// per-destination bounded queue (internal/transport.Outbox).
//
// # Peer tensors
//
// A tensor's header is checked, and its bytes reserved, before its
// payload is read: the current epoch or the next only, an iteration that
// can still run, the plan's sender and shape for its slot, no empty
// tensors; per-peer stream and byte limits, a bounded queue for the next
// epoch (Config documents each; docs/security-limits.md lists them). A
// refused tensor gets a clear status and is counted, but never fails this
// worker's iteration by itself: only the missing real tensor does,
// through the coordinator's deadline.
package worker
