package parallel

import (
	"fmt"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

// Helpers run the shares of a loop that are not the caller's. Starting a
// fresh goroutine for each share was cheap on the goroutine's side, but
// the thread that runs it has often gone to sleep since the last loop, and
// waking a sleeping thread is slow where these loops run: on the 2-core
// VMs of docs/operations.md the second share started about 30 µs after the
// `go` statement on average (BenchmarkShareStart), most of what a second
// thread saves on an RMSNorm (90 µs on one). So a helper that has finished
// its share stays awake for spinFor, offering its thread to any other
// goroutine or process that wants it, and only then sleeps: loops that
// follow each other closely (a training step's products and element-wise
// layers) find it awake. This is the policy of OpenMP's and OpenBLAS's
// worker threads, with a short bound, since another process may want the
// core.

// spinFor is how long an idle helper stays awake for the next share
// (and a caller for its helpers), unless the wait policy is passive.
const spinFor = 200 * time.Microsecond

// WaitEnv names the environment variable that sets the wait policy:
// "active" (the default) keeps helpers and callers awake for spinFor;
// "passive" puts them to sleep at once, as before the helpers, for
// processes that share their cores with others computing (OpenMP's
// OMP_WAIT_POLICY; `stagecoach up` sets it for its workers, which share
// one machine).
const WaitEnv = "STAGECOACH_WAIT"

// spin is how long to stay awake: spinFor, or 0 when passive.
var spin, envErr = waitFromEnv(os.Getenv(WaitEnv))

func waitFromEnv(v string) (time.Duration, error) {
	switch v {
	case "", "active":
		return spinFor, nil
	case "passive":
		return 0, nil
	}
	return spinFor, fmt.Errorf("%s=%q: want \"active\" (threads stay awake briefly between parallel loops) or \"passive\" (they sleep at once; for processes sharing their cores)", WaitEnv, v)
}

// CheckEnv reports an unknown STAGECOACH_WAIT (the default applies).
func CheckEnv() error { return envErr }

// helper is one goroutine running shares handed to it through work.
type helper struct{ work chan func() }

// idle holds the helpers waiting for a share, the most recent last (it is
// the likeliest to be awake).
var idle struct {
	sync.Mutex
	helpers []*helper
}

// spawn runs f on an idle helper, or on a new one when none is idle.
func spawn(f func()) {
	idle.Lock()
	var h *helper
	if n := len(idle.helpers); n > 0 {
		h = idle.helpers[n-1]
		idle.helpers = idle.helpers[:n-1]
	}
	idle.Unlock()
	if h != nil {
		h.work <- f // never blocks: the helper took nothing since it was idle
		return
	}
	h = &helper{work: make(chan func(), 1)}
	go h.run(f)
}

// run runs f, then the shares handed to it, until there are more idle
// helpers than threads to run them (then it ends).
func (h *helper) run(f func()) {
	for {
		f()
		idle.Lock()
		if len(idle.helpers) >= runtime.GOMAXPROCS(0) {
			idle.Unlock()
			return
		}
		idle.helpers = append(idle.helpers, h)
		idle.Unlock()
		f = h.next()
	}
}

// join is a caller's wait for the shares it handed to helpers. The caller
// too stays awake for spinFor before it sleeps: a caller that slept would
// be woken onto its helper's thread, and the helper would then wait for a
// sleeping thread to run on.
type join struct {
	left atomic.Int32
	wg   sync.WaitGroup
}

func (j *join) add(n int) { j.left.Add(int32(n)); j.wg.Add(n) }
func (j *join) done()     { j.left.Add(-1); j.wg.Done() }

func (j *join) wait() {
	start := time.Now()
	for i := 0; j.left.Load() > 0 && awake(start, i); i++ {
	}
	j.wg.Wait()
}

// next waits for the next share: awake for a while, then asleep.
func (h *helper) next() func() {
	start := time.Now()
	for i := 0; ; i++ {
		select {
		case f := <-h.work:
			return f
		default:
		}
		if !awake(start, i) {
			return <-h.work
		}
	}
}

// awake reports whether a goroutine that began to wait at start, and has
// looked i times, should look again rather than sleep. Between looks it
// lets this process's other goroutines, and other processes' threads,
// have its thread.
func awake(start time.Time, i int) bool {
	if spin == 0 || i%32 == 31 && time.Since(start) > spin {
		return false
	}
	runtime.Gosched()
	yieldThread()
	return true
}
