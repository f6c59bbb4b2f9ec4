// Package scheduler owns the Plan: the one description of a pipeline
// iteration that the simulator and the runtime both execute. It holds the
// Plan types and their JSON form, the validator, the Machine that
// interprets one worker's program, and the schedule generators (GPipe,
// 1F1B, interleaved, zero-bubble, SkipPipe).
//
// The package is policy only: it does no I/O, starts no goroutines and
// reads no clock. Time, when a schedule needs it, is passed in as a value;
// randomness comes from a seed passed in.
package scheduler
