package scheduler

// Interleaved 1F1B (Narayanan et al., "Efficient Large-Scale Language
// Model Training on GPU Clusters Using Megatron-LM", 2021): every rank
// holds v model chunks, rank r holding stages r, r+p, ..., r+(v-1)p, and
// runs the 1F1B pattern over "virtual" microbatches, one per (microbatch,
// chunk). Each chunk is 1/v of a rank's layers, so the pipeline fill and
// drain cost (p-1)/v of a stage's time instead of p-1, at the price of v
// times as many point-to-point messages and a deeper warm-up.
//
// # Order
//
// Microbatches are taken in groups. Within a group every rank runs chunk 0
// of all the group's microbatches, then chunk 1, ..., then chunk v-1, and
// only then moves to the next group; the backward pass visits the chunks
// in the reverse order (v-1 first) with the same grouping. There are
// max(1, m/p) groups whose sizes differ by at most one (larger first), so
// every group holds at least p microbatches when m >= p: a microbatch's
// next chunk is never wanted on rank 0 before its previous chunk has come
// round the pipeline. When m is a multiple of p this is Megatron-LM's
// table exactly (groups of p); otherwise it is the grouping PyTorch's
// ScheduleInterleaved1F1B uses (max(1, m/p) rounds), here without its
// requirement that the rounds be equal. Groups of p with a short last
// group, the other natural choice, stall behind the short group and, for
// v >= 3, deadlock.
//
// Rank r runs
//
//	warm-up = min(m*v, (v-1)*g + 2(p-r-1))    (g: the first group's size)
//
// forwards before its first backward, then alternates one forward and one
// backward, then drains the remaining backwards: the last rank has run
// the first group through chunks 0..v-2 by the time the first microbatch
// reaches its last chunk, and every rank further up runs two more, one for
// each hop of the round trip.
//
// # Timing and memory
//
// With a chunk's forward costing 1/v and its backward 2/v of a full
// stage's time and free communication, an iteration takes exactly
//
//	3(m + (p-1)/v)   when m >= p (any m, not only multiples of p)
//	3(p + (m-1)/v)   when m < p
//
// DESIGN section 4's closed form (p=8, m=32: 106.5 for v=2, 101.25 for
// v=4) and its mirror image for short iterations, in which the single
// group cannot fill the pipeline. papers_test.go checks both over a grid,
// and that the programs validate (are deadlock free) everywhere on it.
// The real simulator gives the same times. Rank 0 holds at most
// min(m*v, (v-1)*g + 2p-1) chunk activations, v*p+p-1 when m is a
// multiple of p: p + (p-1)/v stages' worth.

func init() {
	Register("interleaved", func(s Spec) (*Plan, error) {
		return classicPlan(s, "interleaved", 2, interleavedOrder)
	})
}

// vmb is one virtual microbatch: a microbatch on one chunk.
type vmb struct{ mb, chunk int }

// interleavedGroups splits m microbatches into max(1, m/p) groups whose
// sizes differ by at most one, larger groups first: every group holds at
// least p microbatches when m >= p, and all m when m < p.
func interleavedGroups(p, m int) []int {
	n := max(1, m/p)
	out := make([]int, n)
	for g := range out {
		out[g] = m / n
		if g < m%n {
			out[g]++
		}
	}
	return out
}

// interleavedTable lists the virtual microbatches in forward order: each
// group of microbatches through chunk 0, then chunk 1, and so on, before
// the next group starts.
func interleavedTable(p, v, m int) []vmb {
	out := make([]vmb, 0, m*v)
	lo := 0
	for _, size := range interleavedGroups(p, m) {
		for c := range v {
			for mb := lo; mb < lo+size; mb++ {
				out = append(out, vmb{mb, c})
			}
		}
		lo += size
	}
	return out
}

// interleavedWarmup is the number of forwards rank r runs before its
// first backward: the last rank must have run the first group through
// chunks 0..v-2 before the first microbatch reaches its last chunk, and
// each rank further up the pipeline two more (one forward and one
// backward hop of the round trip).
func interleavedWarmup(rank, p, v, m int) int {
	return min(m*v, (v-1)*interleavedGroups(p, m)[0]+2*(p-rank-1))
}

// interleavedOrder is the interleaved 1F1B order of one rank. With one
// chunk it is plain 1F1B.
func interleavedOrder(rank, p, v, m int) []Action {
	if v == 1 {
		return oneFOneBOrder(rank, p, v, m)
	}
	table := interleavedTable(p, v, m)
	total := len(table)
	fwd := func(k int) Action { return F(table[k].mb, table[k].chunk) }
	bwd := func(k int) Action { return B(table[k].mb, v-1-table[k].chunk) }
	warm := interleavedWarmup(rank, p, v, m)
	out := make([]Action, 0, 2*total)
	for k := range warm {
		out = append(out, fwd(k))
	}
	for i := 0; i < total-warm; i++ {
		out = append(out, fwd(warm+i), bwd(i))
	}
	for i := total - warm; i < total; i++ {
		out = append(out, bwd(i))
	}
	return out
}
