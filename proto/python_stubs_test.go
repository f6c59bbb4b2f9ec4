package pb

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// TestPythonStubsAreFresh regenerates the PyTorch backend's Python stubs of
// compute/compute.proto (the command of `make proto-python`) into a
// temporary directory and compares them with the committed files. Without
// protoc or grpc_python_plugin it skips, unless STAGECOACH_REQUIRE_TORCH=1.
func TestPythonStubsAreFresh(t *testing.T) {
	plugin, err := lookPath("grpc_python_plugin", os.Getenv("PATH"))
	if err == nil {
		_, err = lookPath("protoc", os.Getenv("PATH"))
	}
	if err != nil {
		if os.Getenv("STAGECOACH_REQUIRE_TORCH") == "1" {
			t.Fatalf("%v; install protoc and grpc_python_plugin (apt-get install protobuf-compiler protobuf-compiler-grpc)", err)
		}
		t.Skipf("%v; skipping the Python stub check (apt-get install protobuf-compiler protobuf-compiler-grpc)", err)
	}
	out := t.TempDir()
	// -Istagecoach_torch=proto/compute: the stub then imports
	// `from stagecoach_torch import compute_pb2`, the package it lives in.
	cmd := exec.Command("protoc", "-Istagecoach_torch=proto/compute", "--python_out="+out, "--grpc_python_out="+out,
		"--plugin=protoc-gen-grpc_python="+plugin, "stagecoach_torch/compute.proto")
	cmd.Dir = ".."
	if msg, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("protoc: %v\n%s", err, msg)
	}
	for _, f := range []string{"compute_pb2.py", "compute_pb2_grpc.py"} {
		want, err := os.ReadFile(filepath.Join(out, "stagecoach_torch", f))
		if err != nil {
			t.Fatal(err)
		}
		have, err := os.ReadFile(filepath.Join("..", "backends", "torch", "stagecoach_torch", f))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(have, want) {
			t.Errorf("backends/torch/stagecoach_torch/%s is stale: run `make proto-python` and commit the result", f)
		}
	}
}
