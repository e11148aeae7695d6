package relaylink

import (
	"errors"
	"sync/atomic"
	"time"
)

// A Link whose relay goes silent while packets are moving notices it in
// seconds, not after the 3 keepalive intervals of an idle one: an agent
// carrying a tunnel must move it to another relay (or wait for this one)
// well inside the end-to-end session's idle timeout, and before that
// session's retransmission timer has backed off far. The write loop checks
// every silenceTick: if packets went either way within activeWindow and
// nothing at all has come from the relay for silenceSuspect, it pings at
// once, and if nothing comes within silenceProbe of that ping either, the
// Link ends with ErrSilent. An idle Link (no packet within activeWindow)
// relies on the keepalive alone, so that thousands of idle devices cost
// the relay no more than their keepalives.
const (
	silenceTick    = 250 * time.Millisecond
	silenceSuspect = time.Second
	silenceProbe   = 1500 * time.Millisecond
	activeWindow   = 10 * time.Second
)

// ErrSilent ends a Link on which packets were moving when the relay went
// silent and did not answer a ping either.
var ErrSilent = errors.New("relay went silent while packets were moving, and did not answer a ping")

// silence counts what a Link sees, for its write loop's check. The
// counters are atomic: the reader and the senders add to them; the rest
// is the write loop's.
type silence struct {
	framesIn  atomic.Uint64 // every frame read
	packets   atomic.Uint64 // packets sent or received
	lastIn    uint64        // framesIn at the last check
	lastPkts  uint64        // packets at the last check
	heardAt   time.Time     // when framesIn last moved
	activeAt  time.Time     // when packets last moved
	probingAt time.Time     // when the probe ping went; zero if none
}

// check is the write loop's check at now: it returns whether to send a
// probe ping now, or ErrSilent if the probe went unanswered.
func (s *silence) check(now time.Time) (probe bool, err error) {
	if in := s.framesIn.Load(); in != s.lastIn || s.heardAt.IsZero() {
		s.lastIn, s.heardAt, s.probingAt = in, now, time.Time{}
	}
	if p := s.packets.Load(); p != s.lastPkts {
		s.lastPkts, s.activeAt = p, now
	}
	switch {
	case !s.probingAt.IsZero():
		if now.Sub(s.probingAt) >= silenceProbe {
			return false, ErrSilent
		}
	case now.Sub(s.heardAt) >= silenceSuspect && !s.activeAt.IsZero() && now.Sub(s.activeAt) < activeWindow:
		s.probingAt = now
		return true, nil
	}
	return false, nil
}
