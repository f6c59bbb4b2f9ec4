package conformance_test

import (
	"testing"

	"stagecoach/compute"
	"stagecoach/compute/builtin"
	"stagecoach/compute/conformance"
)

// TestBuiltin runs the suite on the built-in Go model in process.
func TestBuiltin(t *testing.T) {
	conformance.Run(t, func(*testing.T) compute.Backend { return builtin.Backend{} }, conformance.Options{})
}
