//go:build !linux

package parallel

// yieldThread: elsewhere, the goroutine yields to this process's others.
func yieldThread() {}
