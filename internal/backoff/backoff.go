// Package backoff is capped exponential backoff with jitter, shared by the
// two loops of the agent that retry: attaching to the relay (relaylink)
// and searching for a direct path (paths). It holds no state of theirs and
// knows nothing of what is retried.
package backoff

import (
	"math/rand/v2"
	"time"
)

// A Backoff draws the n-th wait uniformly from [d/2, d), where
// d = Min·2ⁿ capped at Max, so that agents that failed at the same moment
// do not retry in step. The zero value waits nothing; it is not safe for
// concurrent use.
type Backoff struct {
	Min, Max time.Duration
	// N counts the waits drawn since the last Reset.
	N int
	// Rand, if set, replaces math/rand/v2's Int64N (tests).
	Rand func(n int64) int64
}

// Next returns the next wait.
func (b *Backoff) Next() time.Duration {
	d := b.Max
	if b.N < 32 {
		d = min(b.Min<<b.N, b.Max)
	}
	b.N++
	r := rand.Int64N
	if b.Rand != nil {
		r = b.Rand
	}
	half := d / 2
	if d-half <= 0 {
		return half
	}
	return half + time.Duration(r(int64(d-half)))
}

// Reset starts again from Min.
func (b *Backoff) Reset() { b.N = 0 }
