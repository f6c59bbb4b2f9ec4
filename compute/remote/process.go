package remote

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"
)

// SocketEnv is the environment variable that tells a started backend the
// Unix socket to serve on: a fresh path in a directory of its own, which
// Close removes.
const SocketEnv = "STAGECOACH_COMPUTE_SOCKET"

// Command is a backend to run as a child process.
type Command struct {
	// Args is the command line; Args[0] is looked up in PATH.
	Args []string
	// Env is the child's environment (nil: this process's); SocketEnv is
	// added.
	Env []string
	// Dir is the child's working directory (empty: this process's).
	Dir string
	// Stdout and Stderr receive the child's output (nil: discarded). The
	// end of its stderr is also kept for errors.
	Stdout, Stderr io.Writer
}

// String is the command line, shortened, for errors.
func (c Command) String() string {
	s := strings.Join(c.Args, " ")
	if len(s) > 200 {
		s = s[:200] + "..."
	}
	return s
}

// tailBytes is how much of a child's stderr errors quote.
const tailBytes = 2048

// tail keeps the last tailBytes written to it.
type tail struct {
	mu  sync.Mutex
	buf []byte
}

func (t *tail) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if len(t.buf) > tailBytes {
		t.buf = append(t.buf[:0], t.buf[len(t.buf)-tailBytes:]...)
	}
	return len(p), nil
}

func (t *tail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return strings.TrimSpace(string(t.buf))
}

// process is a started backend.
type process struct {
	cmd    *exec.Cmd
	dir    string // holds the socket
	stderr *tail
	done   chan struct{}
	err    error // Wait's, once done is closed
}

// Start runs the backend command c as a child process in a process group
// of its own, killed by the kernel should this process die (the parent
// death signal), with SocketEnv naming the socket it must serve on. It
// waits (at most opts.StartTimeout) for the backend's Hello; an error
// names the command and quotes the end of its stderr. The child is then
// supervised: when it exits, every call fails at once.
func Start(ctx context.Context, c Command, opts Options) (*Backend, error) {
	if len(c.Args) == 0 || c.Args[0] == "" {
		return nil, errors.New("remote compute backend: empty command")
	}
	dir, err := os.MkdirTemp("", "stagecoach-compute-")
	if err != nil {
		return nil, fmt.Errorf("remote compute backend %q: socket directory: %v", c.String(), err)
	}
	sock := filepath.Join(dir, "backend.sock")
	// sun_path holds 108 bytes with the terminating zero on Linux.
	if len(sock) > 107 {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("remote compute backend %q: socket path %s is longer than a Unix socket allows; set TMPDIR to a shorter directory", c.String(), sock)
	}
	cmd := exec.Command(c.Args[0], c.Args[1:]...)
	env := c.Env
	if env == nil {
		env = os.Environ()
	}
	cmd.Env = append(slices.Clone(env), SocketEnv+"="+sock)
	cmd.Dir = c.Dir
	cmd.Stdout = c.Stdout
	p := &process{cmd: cmd, dir: dir, stderr: &tail{}, done: make(chan struct{})}
	cmd.Stderr = p.stderr
	if c.Stderr != nil {
		cmd.Stderr = io.MultiWriter(p.stderr, c.Stderr)
	}
	// A grandchild holding the stderr pipe must not keep Wait waiting.
	cmd.WaitDelay = time.Second
	// Its own process group, so that stopping it stops whatever it
	// started; the kernel kills it should this process die first.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := startLocked(cmd); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("remote compute backend: start %q: %v", c.String(), err)
	}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	where := fmt.Sprintf("(command %q, pid %d)", c.String(), cmd.Process.Pid)
	b, err := newBackend("unix://"+sock, where, opts, true)
	if err != nil {
		p.kill()
		<-p.wait()
		os.RemoveAll(dir)
		return nil, err
	}
	b.proc = p
	go func() {
		<-p.wait()
		b.fail(p.exitErr())
	}()
	if err := b.greet(ctx, true); err != nil {
		_ = b.Close()
		return nil, err
	}
	return b, nil
}

// Pid is the started backend's process id (0 for a dialled one).
func (b *Backend) Pid() int {
	if b.proc == nil {
		return 0
	}
	return b.proc.cmd.Process.Pid
}

// wait returns a channel closed once the process has exited.
func (p *process) wait() <-chan struct{} { return p.done }

// exitedWithin reports whether the process exits within d.
func (p *process) exitedWithin(d time.Duration) bool {
	select {
	case <-p.wait():
		return true
	case <-time.After(d):
		return false
	}
}

// exitErr says how the process ended (once it has).
func (p *process) exitErr() error {
	return fmt.Errorf("the process exited (%v)%s", p.err, p.stderrNote())
}

// stderrNote quotes the end of the process's stderr, if any.
func (p *process) stderrNote() string {
	s := p.stderr.String()
	if s == "" {
		return "; it wrote nothing to stderr"
	}
	return "; its stderr ends:\n" + s
}

// kill kills the process group.
func (p *process) kill() {
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
}

// stop asks the process to exit (SIGTERM), kills its group after
// timeout, and removes the socket directory.
func (p *process) stop(timeout time.Duration) {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.wait():
	case <-time.After(timeout):
	}
	// Whatever the backend started goes with it (and a stopped process
	// ignores SIGTERM until SIGKILL).
	p.kill()
	<-p.wait()
	os.RemoveAll(p.dir)
}

var (
	launchOnce sync.Once
	launches   chan func()
)

// startLocked starts cmd from one OS thread that lives as long as this
// process: the kernel sends the parent death signal when the thread that
// started the child ends, and the Go runtime may end threads.
func startLocked(cmd *exec.Cmd) error {
	launchOnce.Do(func() {
		launches = make(chan func())
		go func() {
			runtime.LockOSThread() // for good: the thread must outlive every child
			for f := range launches {
				f()
			}
		}()
	})
	errc := make(chan error, 1)
	launches <- func() { errc <- cmd.Start() }
	return <-errc
}
