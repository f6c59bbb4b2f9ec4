// Package pytorchcsv converts between a scheduler.Plan and PyTorch's
// per-rank action CSV: Import reads such a file into a validated Plan,
// Export writes a one-pipeline Plan as one, in either token dialect.
//
// torch.distributed.pipelining writes a schedule as a CSV file with one
// row per pipeline rank, each cell one action of that rank in order,
// spelled stage, computation type, microbatch: "0F0" is stage 0's
// forward of microbatch 0, "2I3" stage 2's input gradient of microbatch 3.
// An empty cell (Python's None) is an idle step. Two dialects exist:
//
//	new (current releases): F forward, I input gradient, W weight gradient, B full backward
//	old (earlier releases): F forward, B input gradient, W weight gradient, BW full backward
//
// In the old dialect a B with no W for the same stage and microbatch is a
// full backward, which is how that version's single-stage schedules wrote
// it. Rows may also hold what PyTorch's lowering adds: communication
// (SEND_F, RECV_F, SEND_B, RECV_B, and the old batched "1SEND_F0_2RECV_B1"),
// UNSHARD, RESHARD and REDUCE_GRAD; they are accepted and skipped, since a
// Plan's sends follow from its paths. "(0F1;1B0)OVERLAP_F_B" runs its
// sub-actions in order, except that a group of one forward and one
// backward of different microbatches is one Overlapped action.
//
// A PyTorch CSV has no loss, all-reduce or optimizer step and no
// topology: the import builds them as the classic schedules do (one worker
// per rank, every microbatch through every stage, the loss right after the
// last stage's forward, an optimizer step at the end of every program).
package pytorchcsv
