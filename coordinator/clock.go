package coordinator

import "time"

// Clock is where the coordinator reads time and waits: the policy decides
// with the time it is given, and a test or a simulation can give another.
type Clock interface {
	Now() time.Time
	After(d time.Duration) <-chan time.Time
}

// RealClock is the wall clock (the default).
type RealClock struct{}

// Now is time.Now.
func (RealClock) Now() time.Time { return time.Now() }

// After is time.After.
func (RealClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

// since is the time elapsed on c since t.
func since(c Clock, t time.Time) time.Duration { return c.Now().Sub(t) }

// clock is c.Clock, or the wall clock for a Config not validated.
func (c *Config) clock() Clock {
	if c.Clock == nil {
		return RealClock{}
	}
	return c.Clock
}
