package remote_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"stagecoach/compute"
	"stagecoach/compute/builtin"
	"stagecoach/compute/conformance"
	"stagecoach/compute/remote"
	"stagecoach/compute/serve"
)

// backendEnv makes this test binary a backend process (see TestMain):
// "go" serves the built-in model, with Forward of microbatch 99 hanging
// after it says so on stderr; "crash" fails at start with a message;
// "silent" never serves.
const backendEnv = "REMOTE_TEST_BACKEND"

func TestMain(m *testing.M) {
	switch os.Getenv(backendEnv) {
	case "":
		os.Exit(m.Run())
	case "crash":
		fmt.Fprintln(os.Stderr, "backend: cannot build the model: out of cheese")
		os.Exit(3)
	case "silent":
		time.Sleep(time.Hour)
		os.Exit(0)
	case "parent":
		// Start a backend, say its pid, and wait to be killed.
		exe, _ := os.Executable()
		b, err := remote.Start(context.Background(), remote.Command{Args: []string{exe}, Env: append(os.Environ(), backendEnv+"=go")}, remote.Options{})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		fmt.Println(b.Pid())
		time.Sleep(time.Hour)
		os.Exit(0)
	case "go":
		srv, err := serve.New(hangingBackend{}, serve.Options{VersionInfo: "test"})
		if err == nil {
			var lis interface{ Close() error }
			l, lerr := serve.Listen("unix://" + os.Getenv(remote.SocketEnv))
			if err = lerr; err == nil {
				lis = l
				err = srv.Serve(l)
				_ = lis.Close()
			}
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
}

// hangingBackend is the built-in backend, except that Forward of
// microbatch 99 says so on stderr and never returns.
type hangingBackend struct{ builtin.Backend }

type hangingStage struct{ compute.Stage }

func (b hangingBackend) Load(ctx context.Context, s compute.LoadSpec) (compute.Stage, error) {
	st, err := b.Backend.Load(ctx, s)
	if err != nil {
		return nil, err
	}
	return hangingStage{st}, nil
}

func (s hangingStage) Forward(mb int, x *compute.Tensor) (*compute.Tensor, error) {
	if mb == 99 {
		fmt.Fprintln(os.Stderr, "forward 99 started")
		select {}
	}
	return s.Stage.Forward(mb, x)
}

// start runs this test binary as a backend in mode.
func start(t *testing.T, mode string, opts remote.Options, stderr *watch) (*remote.Backend, error) {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	c := remote.Command{Args: []string{exe}, Env: append(os.Environ(), backendEnv+"="+mode)}
	if stderr != nil {
		c.Stderr = stderr
	}
	b, err := remote.Start(context.Background(), c, opts)
	if b != nil {
		t.Cleanup(func() { _ = b.Close() })
	}
	return b, err
}

// watch collects a process's stderr and tells when a line appears.
type watch struct {
	mu   sync.Mutex
	buf  bytes.Buffer
	want string
	seen chan struct{}
	once sync.Once
}

func newWatch(want string) *watch { return &watch{want: want, seen: make(chan struct{})} }

func (w *watch) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf.Write(p)
	if strings.Contains(w.buf.String(), w.want) {
		w.once.Do(func() { close(w.seen) })
	}
	return len(p), nil
}

func load(t *testing.T, b compute.Backend, sp compute.ShardSpec) compute.Stage {
	t.Helper()
	st, err := b.Load(context.Background(), compute.LoadSpec{Model: conformance.ModelJSON(conformance.Seed), Shard: sp})
	if err != nil {
		t.Fatal(err)
	}
	return st
}

var blocks = compute.ShardSpec{Lo: 0, Hi: 1}

func hidden() *compute.Tensor {
	x := &compute.Tensor{Shape: []int{conformance.B, conformance.T, conformance.Dim}, Data: make([]float32, conformance.B*conformance.T*conformance.Dim)}
	for i := range x.Data {
		x.Data[i] = float32(i%13) / 13
	}
	return x
}

// failed checks that err is a backend failure naming the backend.
func failed(t *testing.T, err error, names ...string) {
	t.Helper()
	if !errors.Is(err, compute.ErrBackend) {
		t.Fatalf("error %v does not wrap compute.ErrBackend", err)
	}
	t.Logf("error: %v", err)
	for _, n := range names {
		if !strings.Contains(err.Error(), n) {
			t.Fatalf("error %q does not name %q", err, n)
		}
	}
}

// TestConformanceThroughProcess runs the conformance suite on the
// built-in model in a backend process started by Start.
func TestConformanceThroughProcess(t *testing.T) {
	conformance.Run(t, func(t *testing.T) compute.Backend {
		b, err := start(t, "go", remote.Options{}, nil)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}, conformance.Options{})
}

// TestConformanceThroughDial runs it through a server in this process,
// dialled on a Unix socket.
func TestConformanceThroughDial(t *testing.T) {
	conformance.Run(t, func(t *testing.T) compute.Backend {
		return dialServer(t, builtin.Backend{}, serve.Options{}, remote.Options{})
	}, conformance.Options{})
}

// dialServer serves b on a fresh Unix socket in this process and dials it.
func dialServer(t *testing.T, b compute.Backend, so serve.Options, ro remote.Options) *remote.Backend {
	t.Helper()
	addr := socketAddr(t)
	srv, err := serve.Start(b, so, addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Stop)
	rb, err := remote.Dial(context.Background(), addr, ro)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rb.Close() })
	return rb
}

// socketAddr is a fresh Unix socket address in a short directory (a
// socket path is limited to 107 bytes).
func socketAddr(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "rt")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return "unix://" + filepath.Join(dir, "s.sock")
}

// TestKilledMidCall: a backend killed (SIGKILL) while computing fails
// the call in flight and every later one, naming the backend.
func TestKilledMidCall(t *testing.T) {
	w := newWatch("forward 99 started")
	b, err := start(t, "go", remote.Options{}, w)
	if err != nil {
		t.Fatal(err)
	}
	st := load(t, b, blocks)
	errc := make(chan error, 1)
	go func() {
		_, err := st.Forward(99, hidden())
		errc <- err
	}()
	<-w.seen
	if err := syscall.Kill(b.Pid(), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	err = <-errc
	failed(t, err, `"go" backend`, "exited", "signal: killed", fmt.Sprint(b.Pid()))
	if !strings.Contains(err.Error(), "forward 99 started") {
		t.Errorf("error %q does not quote the backend's stderr", err)
	}
	// Every later call fails at once with the same failure.
	_, err2 := st.Forward(0, hidden())
	failed(t, err2, `"go" backend`)
	if err2.Error() != err.Error() {
		t.Errorf("later call: %v, want the first failure %v", err2, err)
	}
	if _, err := b.Load(context.Background(), compute.LoadSpec{Model: conformance.ModelJSON(1), Shard: blocks}); !errors.Is(err, compute.ErrBackend) {
		t.Errorf("Load after the backend died: %v", err)
	}
	if d := st.Describe(); d.Width != conformance.Dim {
		t.Errorf("Describe after the backend died: width %d", d.Width)
	}
}

// TestHungBackend: a backend that stops answering (SIGSTOP) fails the
// call at its deadline.
func TestHungBackend(t *testing.T) {
	b, err := start(t, "go", remote.Options{CallTimeout: 300 * time.Millisecond, StopTimeout: 100 * time.Millisecond}, nil)
	if err != nil {
		t.Fatal(err)
	}
	st := load(t, b, blocks)
	if _, err := st.Forward(0, hidden()); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(b.Pid(), syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	waitStopped(t, b.Pid())
	_, err = st.Forward(1, hidden())
	failed(t, err, `"go" backend`, "Forward did not answer within 300ms", fmt.Sprint(b.Pid()))
	if err := st.ZeroGrad(); err == nil || err.Error() != b.Err().Error() {
		t.Errorf("call after the hang: %v, want %v", err, b.Err())
	}
	// Close kills the stopped process.
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(b.Pid(), 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("the hung backend (pid %d) still exists after Close: %v", b.Pid(), err)
	}
}

// waitStopped waits until every thread of process pid is stopped: a
// signal is delivered, not obeyed, by the time kill returns.
func waitStopped(t *testing.T, pid int) {
	t.Helper()
	for {
		tasks, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/stat", pid))
		if err != nil || len(tasks) == 0 {
			t.Fatalf("threads of process %d: %v", pid, err)
		}
		stopped := true
		for _, task := range tasks {
			b, err := os.ReadFile(task)
			if err != nil {
				stopped = false
				break
			}
			// pid (comm) state ...: comm may hold spaces, not ')'.
			s := string(b)
			i := strings.LastIndexByte(s, ')')
			if i < 0 || i+2 >= len(s) || s[i+2] != 'T' {
				stopped = false
				break
			}
		}
		if stopped {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestStartFailures: a command that dies at start, or never serves,
// fails Start with an error naming the command (and its stderr).
func TestStartFailures(t *testing.T) {
	_, err := start(t, "crash", remote.Options{}, nil)
	failed(t, err, "command", "exit status 3", "out of cheese")
	_, err = start(t, "silent", remote.Options{StartTimeout: 300 * time.Millisecond, StopTimeout: 100 * time.Millisecond}, nil)
	failed(t, err, "command", "no Hello within 300ms")
	_, err = remote.Start(context.Background(), remote.Command{Args: []string{"/nonexistent/backend"}}, remote.Options{})
	if err == nil || !strings.Contains(err.Error(), "/nonexistent/backend") {
		t.Fatalf("starting a missing command: %v", err)
	}
}

// TestCloseStopsTheProcess: Close ends a started backend and removes
// its socket.
func TestCloseStopsTheProcess(t *testing.T) {
	b, err := start(t, "go", remote.Options{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if b.Name() != builtin.Name || b.VersionInfo() != "test" {
		t.Fatalf("Hello: name %q version %q", b.Name(), b.VersionInfo())
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(b.Pid(), 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("the backend (pid %d) still exists after Close: %v", b.Pid(), err)
	}
	if _, err := b.Load(context.Background(), compute.LoadSpec{Model: conformance.ModelJSON(1), Shard: blocks}); !errors.Is(err, compute.ErrBackend) {
		t.Errorf("Load after Close: %v", err)
	}
}

// TestDialNothing: dialling an address nobody serves fails, naming it.
func TestDialNothing(t *testing.T) {
	addr := socketAddr(t)
	_, err := remote.Dial(context.Background(), addr, remote.Options{StartTimeout: time.Second})
	failed(t, err, addr)
}

// TestDescribeConcurrently: Describe may run beside the stage's calls
// (run with -race).
func TestDescribeConcurrently(t *testing.T) {
	b := dialServer(t, builtin.Backend{}, serve.Options{}, remote.Options{})
	st := load(t, b, blocks)
	want := st.Describe().GradElems()
	done := make(chan struct{})
	var wg sync.WaitGroup
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-done:
					return
				default:
				}
				if d := st.Describe(); d.GradElems() != want {
					t.Errorf("Describe changed: %d gradient elements, then %d", want, d.GradElems())
					return
				}
			}
		}()
	}
	for mb := range 20 {
		if _, err := st.Forward(mb, hidden()); err != nil {
			t.Error(err)
		}
	}
	close(done)
	wg.Wait()
}

// TestBackendDiesWithItsParent: a started backend does not outlive the
// process that started it, even one killed by SIGKILL.
func TestBackendDiesWithItsParent(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	parent := exec.Command(exe)
	parent.Env = append(os.Environ(), backendEnv+"=parent")
	out, err := parent.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := parent.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		_ = parent.Process.Kill()
		_ = parent.Wait()
	}()
	var pid int
	if _, err := fmt.Fscan(out, &pid); err != nil {
		t.Fatalf("the parent did not say its backend's pid: %v", err)
	}
	if !alive(pid) {
		t.Fatalf("backend %d is not running", pid)
	}
	// Nobody is left to remove the backend's socket directory: the test
	// does, once it is over.
	if env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid)); err == nil {
		for _, kv := range strings.Split(string(env), "\x00") {
			if sock, ok := strings.CutPrefix(kv, remote.SocketEnv+"="); ok && strings.HasPrefix(filepath.Base(filepath.Dir(sock)), "stagecoach-compute-") {
				t.Cleanup(func() { os.RemoveAll(filepath.Dir(sock)) })
			}
		}
	}
	if err := parent.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	// The kernel's parent-death signal acts at once; the bound only
	// keeps a failure from waiting for the test binary's timeout.
	for deadline := time.Now().Add(time.Minute); alive(pid); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
			t.Fatalf("backend %d outlived its parent", pid)
		}
	}
}

// alive reports whether process pid exists and is not a zombie.
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i >= 0 && i+2 < len(s) && s[i+2] != 'Z' && s[i+2] != 'X'
}
