// Package torch_test runs the PyTorch backend's Python tests
// (backends/torch/tests) with Debian's interpreter, so `go test ./...`
// covers the backend: gradients against finite differences, exact state
// round trips, refusals of bad input, and split-versus-whole exactness.
package torch_test

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// python is the interpreter the backend runs on: Debian's, which sees the
// python3-torch, python3-grpcio and python3-protobuf packages (a pyenv
// python3 on PATH may not).
const python = "/usr/bin/python3"

func TestPythonSuite(t *testing.T) {
	if testing.Short() {
		t.Skip("the Python suite takes tens of seconds; skipped with -short")
	}
	for _, mod := range []string{"torch", "grpc", "google.protobuf"} {
		if out, err := exec.Command(python, "-c", "import "+mod).CombinedOutput(); err != nil {
			msg := python + " cannot import " + mod + " (apt-get install python3-torch python3-grpcio python3-protobuf): " + lastLine(out, err)
			if os.Getenv("STAGECOACH_REQUIRE_TORCH") == "1" {
				t.Fatal(msg)
			}
			t.Skip(msg)
		}
	}
	cmd := exec.Command(python, "-m", "unittest", "discover", "-v", "-s", "tests")
	cmd.Env = append(os.Environ(), "OMP_NUM_THREADS=1", "OPENBLAS_NUM_THREADS=1", "MKL_NUM_THREADS=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s -m unittest discover -s backends/torch/tests: %v\n%s", python, err, out)
	}
	t.Logf("%s", out)
}

func lastLine(out []byte, err error) string {
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if l := lines[len(lines)-1]; l != "" {
		return l
	}
	return err.Error()
}
