package relaylink

import (
	"log/slog"
	"slices"
	"time"
)

// How the attach loop moves between relays (see candidates): a round of
// attempts dials the candidates in turn, the next one as soon as one
// fails, and backs off only once every one has; a Link lost to a relay
// that went down (closed, reset, silent, shutting down) is followed at
// once by an attempt at the next relay, and the lost one comes last,
// after its usual wait (backoff, ReattachSpread, the relay's retry-after),
// which protects a restarting relay from its returning agents. While
// attached away from home, the loop dials home now and then, and moves
// once that Link is attached: packets go to the new Link from then on,
// and the old one writes what it had queued before it is closed.

// moveDrain bounds how long the Link left for home may take to write what
// it had queued.
const moveDrain = time.Second

// mover is the attach loop's state for moving between relays.
type mover struct {
	candidates
	interval time.Duration        // Config.HomeInterval
	keep     bool                 // Config.KeepRelay
	homeWas  candidate            // home when last tried, or when attached
	homeAt   time.Time            // when to try home next
	movedAt  time.Time            // the last move at once after a loss
	logged   map[string]loggedErr // by relay address: the last attach error logged
}

// loggedErr is an attach error logged, and when: the same one again is
// logged once a minute, not at every attempt.
type loggedErr struct {
	msg string
	at  time.Time
}

func (m *mover) init(cfg Config) {
	m.candidates.init(cfg)
	m.interval = cfg.HomeInterval
	m.keep = cfg.KeepRelay
	m.homeWas = m.home()
	m.logged = make(map[string]loggedErr)
}

// retry says when the loop may dial the relays again after a Link ended.
type retry struct {
	lost     int       // the lost relay's position among the candidates; -1 for none
	lostAt   time.Time // not before, for the lost relay
	othersAt time.Time // not before, for the others
}

// after returns the retry after l ended: the lost relay after wait, the
// others after others.
func (m *mover) after(l *Link, wait, others time.Duration) retry {
	now := time.Now()
	return retry{lost: m.index(l.addr, l.relayID), lostAt: now.Add(wait), othersAt: now.Add(others)}
}

// quickDrop is how short a Link must have been for its loss to count as
// a relay that accepts and drops at once.
const quickDrop = 2 * time.Second

// others returns how long to wait before another relay, after a relay
// went down under a Link that lasted lasted: no time, unless the loop
// moved at once already less than stableLink ago and that Link lasted
// less than quickDrop (relays that accept and drop at once would make it
// loop), in which case wait. A Link that lasted longer was a working
// one, and its agent moves at once however often relays die under it:
// its tunnels wait for the move.
func (m *mover) others(lasted, wait time.Duration) time.Duration {
	if lasted < quickDrop && time.Since(m.movedAt) < stableLink {
		return wait
	}
	m.movedAt = time.Now()
	return 0
}

// dialRound dials the candidates in turn, as next says, until one
// attaches, and returns that Link with the state version sent on it. If
// none does, it returns the last error, permanent only if every candidate
// refused the agent for good.
func (a *Attacher) dialRound(next retry) (*Link, uint64, error) {
	var lost candidate
	if next.lost >= 0 {
		lost = a.move.list[next.lost]
	}
	var transient, refused error
	round := a.move.round(next.lost)
	if id := a.preferNext.Swap(nil); id != nil {
		if i := slices.IndexFunc(round, func(c candidate) bool { return c.mapID == *id }); i > 0 {
			c := round[i]
			round = slices.Insert(slices.Delete(round, i, i+1), 0, c)
		}
	}
	for _, c := range round {
		at := next.othersAt
		if next.lost >= 0 && c == lost {
			at = next.lostAt
		}
		if wait := time.Until(at); wait > 0 {
			a.sleep(wait)
		}
		if err := a.ctx.Err(); err != nil {
			return nil, 0, err
		}
		l, version, err := a.dial(c)
		if err == nil {
			return l, version, nil
		}
		if a.ctx.Err() != nil {
			return nil, 0, err
		}
		if isPermanent(err) {
			a.move.refuse(c.Addr)
			refused = err
		} else {
			transient = err
		}
		a.attemptFailed(c.Addr, err)
	}
	if transient == nil {
		return nil, 0, refused
	}
	return nil, 0, transient
}

// dial attaches to candidate c, and learns the fleet map it shows (unless
// the Attacher stays on its relay).
func (a *Attacher) dial(c candidate) (*Link, uint64, error) {
	st, version := a.state()
	cfg := a.cfg
	cfg.Relay = c.RelayConfig
	l, err := Dial(a.ctx, cfg, st)
	if err != nil {
		return nil, 0, err
	}
	a.move.admitted(c.Addr)
	if m, ok := l.FleetMap(); ok && !a.cfg.Stay && a.move.learn(m) {
		a.log.Info("learned the fleet map", "fleet", m.FleetID.String(), "version", m.Version, "relays", len(m.Relays), "home", a.move.home().Addr)
	}
	return l, version, nil
}

// attemptFailed logs a failed attempt at the relay at addr, and makes it
// the attachment's state unless it is a refusal for good while other
// relays remain to try.
func (a *Attacher) attemptFailed(addr string, err error) {
	level := slog.LevelWarn
	permanent := isPermanent(err)
	if permanent {
		level = slog.LevelError
	}
	if last := a.move.logged[addr]; err.Error() == last.msg && time.Since(last.at) < time.Minute {
		level = slog.LevelDebug
	} else {
		a.move.logged[addr] = loggedErr{msg: err.Error(), at: time.Now()}
	}
	a.log.Log(a.ctx, level, "relay attach failed", "relay", addr, "err", err)
	if !permanent || a.move.allRefused() {
		a.setStatus(func(s *Status) { s.Relay, s.LastError, s.Since = addr, err, time.Now() })
	}
}

// run serves l, attached at start, until the Link it is on ends; away
// from home, it moves home when it can. It returns the Link it was on
// last, when that one attached, and how it ended.
func (a *Attacher) run(l *Link, start time.Time) (*Link, time.Time, ended) {
	a.move.arrived(l)
	for {
		done := make(chan ended, 1)
		go func() { done <- a.serve(l) }()
		var next *Link
		var version uint64
		for next == nil {
			at, away := a.move.homeDue(l)
			if !away {
				return l, start, <-done
			}
			t := time.NewTimer(time.Until(at))
			select {
			case end := <-done:
				t.Stop()
				return l, start, end
			case <-t.C:
				next, version = a.moveHome(l)
			}
		}
		// Packets go to the new Link from here on; the old one writes
		// what it has queued, and delivers what arrives meanwhile.
		a.cur.Store(next)
		l.Drain(moveDrain)
		l.Close()
		<-done
		a.log.Info("moving to relay", "from", l.addr, "to", next.addr)
		l, start = next, time.Now()
		a.attached(l, version, start)
		a.move.arrived(l)
	}
}

// arrived notes that the agent attached to l: if it is away from home,
// it tries home at once when the home is new (a map changed it, or l's
// relay is no longer a candidate), after a while otherwise.
func (m *mover) arrived(l *Link) {
	i := m.index(l.addr, l.relayID)
	if i == 0 {
		m.homeWas = m.home()
		return
	}
	if i > 0 && m.home() == m.homeWas {
		m.homeAt = time.Now().Add(homeWait(m.interval))
		return
	}
	m.homeAt = time.Now()
}

// homeDue reports whether the agent attached to l is away from home, and
// when to try home next. An agent that keeps its relay (Config.KeepRelay)
// is away from home only when l's relay is no longer a candidate.
func (m *mover) homeDue(l *Link) (time.Time, bool) {
	i := m.index(l.addr, l.relayID)
	if m.keep {
		return m.homeAt, i < 0
	}
	return m.homeAt, i != 0
}

// moveHome dials home for the agent attached to l, or, if l's relay is no
// longer a candidate, the candidates in turn, and returns the first Link
// that attaches and the state version sent on it; nil if none does.
func (a *Attacher) moveHome(l *Link) (*Link, uint64) {
	m := &a.move
	m.homeWas = m.home()
	m.homeAt = time.Now().Add(homeWait(m.interval))
	try := m.list[:1]
	if m.index(l.addr, l.relayID) < 0 {
		try = m.round(-1)
	}
	for _, c := range try {
		if m.isRefused(c.Addr) {
			continue
		}
		next, version, err := a.dial(c)
		if err == nil {
			return next, version
		}
		if a.ctx.Err() != nil {
			return nil, 0
		}
		if isPermanent(err) {
			m.refuse(c.Addr)
		}
		a.log.Info("could not move to relay: staying", "relay", l.addr, "to", c.Addr, "err", err)
	}
	return nil, 0
}
