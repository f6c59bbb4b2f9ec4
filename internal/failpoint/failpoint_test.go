package failpoint

import (
	"os"
	"os/exec"
	"sync"
	"syscall"
	"testing"
)

func TestValueParsesTheEnvironment(t *testing.T) {
	t.Setenv(EnvVar, " checkpoint-write=6, other=x,broken, =y")
	once = sync.Once{}
	if v, ok := Value(CheckpointWrite); !ok || v != "6" {
		t.Errorf("Value(%q) = %q, %v; want 6, true", CheckpointWrite, v, ok)
	}
	if v, ok := Value("other"); !ok || v != "x" {
		t.Errorf(`Value("other") = %q, %v`, v, ok)
	}
	for _, n := range []string{"broken", "", "missing"} {
		if _, ok := Value(n); ok {
			t.Errorf("Value(%q) is armed", n)
		}
	}
}

// TestCrashKillsTheProcess re-runs the test binary as a child that calls
// Crash and checks it died of SIGKILL.
func TestCrashKillsTheProcess(t *testing.T) {
	if os.Getenv("FAILPOINT_CHILD") == "1" {
		Crash()
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashKillsTheProcess$")
	cmd.Env = append(os.Environ(), "FAILPOINT_CHILD=1")
	err := cmd.Run()
	ee, ok := err.(*exec.ExitError)
	if !ok {
		t.Fatalf("child ended with %v, want death by signal", err)
	}
	ws := ee.Sys().(syscall.WaitStatus)
	if !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("child status %v, want killed by SIGKILL", ws)
	}
}
