// Package scheduler owns the Plan: the one description of a pipeline
// iteration that the simulator and the runtime both execute. It holds the
// Plan types and their JSON form, the validator, the Machine that
// interprets one worker's program, and the registry of schedule
// generators with the classic ones in it (GPipe, 1F1B, interleaved and
// looped, zero-bubble, the V schedules), with the layer split and memory
// counts they share.
//
// What builds or reads plans otherwise has its own package below:
// scheduler/skippipe plans SkipPipe's skipping paths over a cluster,
// scheduler/skippiperef imports the SkipPipe authors' schedule files,
// scheduler/pytorchcsv converts to and from PyTorch's action CSV, and
// scheduler/auto searches for the fastest schedule.
//
// The package is policy only: it does no I/O, starts no goroutines and
// reads no clock. Time, when a schedule needs it, is passed in as a value;
// randomness comes from a seed passed in.
package scheduler
