// Package skippipe plans SkipPipe iterations (skipping and swapping
// pipeline stages on slow, uneven networks): given the nodes, their
// compute and the delays between them, it places nodes in stages, plans
// every microbatch's path and every node's program, and returns a
// scheduler.Plan. Plan, PlanRandom, FullPipeline and PlanVariant are the
// variants (skippipe, skippipe-nonca, skippipe-random, skippipe-full);
// PlanOnPartition replans on a fixed, possibly shrunken placement; Net
// orders and builds paths chosen elsewhere (package skippiperef, the
// authors' own plans) the same way.
//
// Like package scheduler it is policy only: no I/O, no goroutines, no
// clock; randomness comes from the seed in the Config.
package skippipe
