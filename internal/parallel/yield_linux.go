package parallel

import "syscall"

// yieldThread offers the thread's CPU to another runnable thread, of this
// process or another (sched_yield), so that a helper awake for the next
// share does not hold a core another process is waiting for.
func yieldThread() { _, _, _ = syscall.RawSyscall(syscall.SYS_SCHED_YIELD, 0, 0, 0) }
