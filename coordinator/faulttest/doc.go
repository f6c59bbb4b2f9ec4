// Package faulttest injects real faults into real processes: it builds the
// stagecoach binary once, runs `stagecoach worker` (and, for leader
// failover, `stagecoach coordinator`) processes against an embedded etcd,
// then kills (-9), pauses (SIGSTOP) and resumes them mid-run. Each test
// checks that the run reaches its step count, that the committed step
// sequence in etcd has no gap or duplicate, and, where the schedule is
// exact (GPipe), that the final parameters equal the single-process
// trainer's bit for bit. Detection-to-recovery times are logged per fault
// and summarised on one line per test ("FAULT ..."), never asserted as
// upper bounds: they depend on the machine.
//
// The package holds only tests; it lives apart from coordinator so that
// `go test ./coordinator` stays fast and needs no binary.
package faulttest
