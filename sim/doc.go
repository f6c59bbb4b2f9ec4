// Package sim is Stagecoach's discrete-event simulator. It runs a
// scheduler.Plan against a cost model of compute and network (a Cluster)
// with a virtual clock, driving the very same scheduler.Machine that
// workers run, so a simulated iteration and a measured one execute the
// same programs. Events are popped from a heap ordered by time and then by
// a sequence number, so results are deterministic.
//
// The package also writes what it measures: comparison tables, Chrome
// trace-event files (Perfetto) and Gantt charts.
package sim
