// Package computepb holds the compute protocol between a worker and a
// compute backend process (see compute.proto and package compute). The
// Go code beside compute.proto is generated: run `make proto` after
// editing it (proto/generate_test.go fails when it is stale).
package computepb
