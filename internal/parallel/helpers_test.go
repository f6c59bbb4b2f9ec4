package parallel

import (
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestHelpersStayBounded: helpers are reused rather than piling up. After
// many loops on more goroutines than threads, no more helpers are left
// than GOMAXPROCS (each waits, awake or asleep, for the next share).
func TestHelpersStayBounded(t *testing.T) {
	before := runtime.NumGoroutine()
	for range 2000 {
		For(4, 4, func(int, int, int) {})
	}
	time.Sleep(10 * spinFor) // every helper has gone to sleep
	idle.Lock()
	n := len(idle.helpers)
	idle.Unlock()
	if max := runtime.GOMAXPROCS(0); n > max {
		t.Fatalf("%d idle helpers, want at most GOMAXPROCS = %d", n, max)
	}
	if after := runtime.NumGoroutine(); after > before+runtime.GOMAXPROCS(0) {
		t.Fatalf("%d goroutines after 2000 loops, %d before: helpers are not reused", after, before)
	}
}

// TestHelpersWakeFromSleep: a share handed to a helper that has gone to
// sleep (past spinFor) runs, and every iteration runs once, whether the
// helpers are awake or asleep.
func TestHelpersWakeFromSleep(t *testing.T) {
	for round := range 5 {
		seen := make([]atomic.Int32, 64)
		Steal(3, len(seen), func(_, i int) { seen[i].Add(1) })
		for i := range seen {
			if k := seen[i].Load(); k != 1 {
				t.Fatalf("round %d: iteration %d ran %d times", round, i, k)
			}
		}
		time.Sleep(3 * spinFor)
	}
}

// TestLoopsFromManyGoroutines: loops started at once from several
// goroutines (workers of one process, each stepping its own stage) each
// run every iteration once, on helpers they do not share at the same
// time (run it with -race).
func TestLoopsFromManyGoroutines(t *testing.T) {
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for r := range 200 {
				n := 1 + (g*31+r)%50
				seen := make([]int32, n)
				var busy [3]atomic.Int32
				Steal(3, n, func(w, i int) {
					if busy[w].Add(1) != 1 {
						t.Errorf("two goroutines ran as worker %d at once", w)
					}
					seen[i]++
					busy[w].Add(-1)
				})
				For(3, n, func(_, lo, hi int) {
					for i := lo; i < hi; i++ {
						seen[i]++
					}
				})
				for i, k := range seen {
					if k != 2 {
						t.Errorf("goroutine %d round %d: iteration %d ran %d times, want 2", g, r, i, k)
						return
					}
				}
			}
		}()
	}
	wg.Wait()
}

// spinWork keeps a thread busy for d (a stand-in for a share's compute).
func spinWork(d time.Duration) {
	for start := time.Now(); time.Since(start) < d; {
	}
}

// BenchmarkShareStart times how late the second share of a two-way loop
// starts after the caller hands it over, when 100 µs of serial work came
// before the loop (as an element-wise layer comes between two matrix
// products): through the helpers and their join, and through a fresh
// goroutine per share and a sync.WaitGroup as before them, side by side
// in one run. Run it with -cpu 2.
func BenchmarkShareStart(b *testing.B) {
	loop := func(b *testing.B, share func(f func()) (wait func())) {
		var late time.Duration
		for b.Loop() {
			spinWork(100 * time.Microsecond)
			handed := time.Now()
			wait := share(func() {
				late += time.Since(handed)
				spinWork(20 * time.Microsecond)
			})
			spinWork(20 * time.Microsecond)
			wait()
		}
		b.ReportMetric(float64(late.Nanoseconds())/float64(b.N)/1e3, "µs-late")
	}
	b.Run("helpers", func(b *testing.B) {
		loop(b, func(f func()) func() {
			var j join
			j.add(1)
			spawn(func() { f(); j.done() })
			return j.wait
		})
	})
	b.Run("fresh-goroutine", func(b *testing.B) {
		loop(b, func(f func()) func() {
			var wg sync.WaitGroup
			wg.Add(1)
			go func() { f(); wg.Done() }()
			return wg.Wait
		})
	})
}

func TestWaitFromEnv(t *testing.T) {
	for _, c := range []struct {
		v    string
		want time.Duration
		bad  bool
	}{{"", spinFor, false}, {"active", spinFor, false}, {"passive", 0, false}, {"Passive", spinFor, true}, {"1", spinFor, true}} {
		got, err := waitFromEnv(c.v)
		if got != c.want || (err != nil) != c.bad {
			t.Errorf("%s=%q: %v, %v; want %v, error %v", WaitEnv, c.v, got, err, c.want, c.bad)
		}
		if err != nil && !strings.Contains(err.Error(), WaitEnv) {
			t.Errorf("error %q does not name %s", err, WaitEnv)
		}
	}
}
