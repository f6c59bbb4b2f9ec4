package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"stagecoach/internal/etcdx"
	"stagecoach/internal/parallel"
)

// TestMain lets tests run the real binary: the test executable re-executes
// itself as `stagecoach` when STAGECOACH_TEST_MAIN is set.
func TestMain(m *testing.M) {
	if os.Getenv("STAGECOACH_TEST_MAIN") == "1" {
		os.Args = append([]string{"stagecoach"}, os.Args[1:]...)
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// testEtcd starts an embedded etcd with its data under dir/etcd, closed
// when the test ends, and returns it with its endpoints joined for --etcd.
func testEtcd(t *testing.T, dir string) (*etcdx.Embedded, string) {
	t.Helper()
	e, err := etcdx.StartEmbedded(context.Background(), etcdx.EmbedConfig{Dir: filepath.Join(dir, "etcd")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	return e, strings.Join(e.Endpoints(), ",")
}

// selfExe is this test binary, which runs as stagecoach when
// STAGECOACH_TEST_MAIN=1.
func selfExe(t *testing.T) string {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return exe
}

// runCLI runs the binary with args in dir and returns stdout, stderr and
// the exit status.
func runCLI(t *testing.T, dir string, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(selfExe(t), args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "STAGECOACH_TEST_MAIN=1")
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return out.String(), errb.String(), code
}

// pflag takes a back-quoted word in a flag's usage as the name of its
// value ("--tls-cert stagecoach certs"): no flag of any command may
// produce a value name that is not one word.
func TestFlagHelpValueNamesAreOneWord(t *testing.T) {
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		c.Flags().VisitAll(func(f *pflag.Flag) {
			if name, _ := pflag.UnquoteUsage(f); strings.ContainsAny(name, " \t") {
				t.Errorf("%s --%s: help shows the value as %q (a back-quoted phrase in its usage)", c.CommandPath(), f.Name, name)
			}
		})
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(rootCmd)
}

// An unknown wait policy is refused before any work, naming the variable.
func TestUnknownWaitPolicyIsRefused(t *testing.T) {
	t.Setenv(parallel.WaitEnv, "eager")
	_, errOut, code := runCLI(t, t.TempDir(), "train", "--steps", "1")
	if code != 2 || !strings.Contains(errOut, `STAGECOACH_WAIT="eager"`) {
		t.Fatalf("exit %d, stderr %q; want 2 naming STAGECOACH_WAIT", code, errOut)
	}
}

// up's workers wait passively when several share the machine, unless
// the user chose a policy.
func TestUpWorkersWaitPassively(t *testing.T) {
	has := func(env []string) bool { return slices.Contains(env, parallel.WaitEnv+"=passive") }
	t.Setenv(parallel.WaitEnv, "") // restored after the test
	os.Unsetenv(parallel.WaitEnv)
	if env := workerEnv(3); !has(env) {
		t.Errorf("3 workers: %s not passive", parallel.WaitEnv)
	}
	if env := workerEnv(1); env != nil {
		t.Errorf("1 worker: environment changed")
	}
	t.Setenv(parallel.WaitEnv, "active")
	if env := workerEnv(3); env != nil {
		t.Errorf("%s=active set by the user was overridden", parallel.WaitEnv)
	}
}
