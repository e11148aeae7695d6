package client

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/lan"
	"github.com/burrow-tunnel/burrow/session"
)

// The LAN: unless the client is kept off it, every session is dialed over
// the relay and, at the same time, on the LAN (a race, not a fallback).
// The client asks the LAN over mDNS for the device's current tag (package
// lan), which only those who know the device's ID can compute, and dials
// each address announced under it, directly, with the device's key pinned
// as always. A session on the LAN wins over one through the relay; with
// the relay down, the LAN alone serves.

const (
	// lanHeadStart is how long a session through the relay waits for the
	// LAN to answer at all, counted from the start of the dial: on a LAN
	// the device answers within milliseconds, and a session there is
	// worth a few of them.
	lanHeadStart = 100 * time.Millisecond
	// lanGrace bounds how long a session through the relay waits for
	// dials on the LAN still going: a handshake there takes milliseconds,
	// and an address that does not answer (announced by someone who lies,
	// or unreachable from here) must not hold the session up.
	lanGrace = 500 * time.Millisecond
	// lanFindFor is how long the LAN is listened to at least; it goes on
	// while the dial through the relay does (a device may come up on the
	// LAN meanwhile), re-asking at growing intervals.
	lanFindFor = time.Second
)

// A dialed is one attempt's outcome.
type dialed struct {
	sess *session.Session
	err  error
	addr netip.AddrPort // where on the LAN; zero for the relay
}

// race dials device over the relay and on the LAN at once, and returns
// the session that wins and whether it is on the LAN: the first on the
// LAN, or else the relay's, once the LAN had its head start and no dial
// there is still going (or lanGrace has passed since the relay's was
// ready). The losers are closed. It fails once the relay
// failed, the LAN was listened to for lanFindFor and no dial there is
// still going, or when ctx ends. The relay's word that the
// device is gone (dc.relayCancel) ends the dial over the relay only.
func (c *Client) race(ctx context.Context, dc *deviceConn, device identity.ID) (*session.Session, bool, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	relayCtx, relayCancel := context.WithCancelCause(ctx)
	defer relayCancel(nil)
	c.mu.Lock()
	dc.relayCancel = relayCancel
	c.mu.Unlock()
	results := make(chan dialed)
	send := func(r dialed) {
		select {
		case results <- r:
		case <-ctx.Done():
			if r.sess != nil {
				r.sess.Close(session.CloseNormal, "another path won")
			}
		}
	}
	c.wg.Go(func() {
		s, err := c.agent.Dial(relayCtx, device)
		send(dialed{sess: s, err: err})
	})
	findCtx, stopFind := context.WithCancel(ctx)
	defer stopFind()
	ls := c.searchLAN(ctx, findCtx, device, send)

	var (
		relay        *session.Session // held while the LAN may still win
		relayPending = true
		relayErr     error
		lanErrs      []error
		headStarted  bool
		listened     bool // for lanFindFor
		graceOver    bool // lanGrace since the relay's session was ready
		grace        <-chan time.Time
	)
	headStart := time.NewTimer(lanHeadStart)
	defer headStart.Stop()
	findFor := time.NewTimer(lanFindFor)
	defer findFor.Stop()
	for {
		dials, searching := ls.state()
		if relay != nil && (dials == 0 && (headStarted || !searching) || graceOver) {
			return relay, false, nil
		}
		if !relayPending && relay == nil && dials == 0 && (listened || !searching) {
			return nil, false, raceError(device, relayErr, lanErrs)
		}
		if !relayPending && searching && listened {
			stopFind() // nothing left to listen for
		}
		select {
		case r := <-results:
			switch {
			case r.addr.IsValid():
				ls.dialed()
				if r.err == nil {
					if relay != nil {
						relay.Close(session.CloseNormal, "the LAN won")
					}
					return r.sess, true, nil
				}
				if errors.Is(r.err, identity.ErrKeyMismatch) {
					c.log.Warn("a host on the LAN answered for the device with another key: not spoken to", "device", device.String(), "addr", r.addr.String(), "err", r.err)
				} else {
					c.log.Debug("no session on the LAN", "device", device.String(), "addr", r.addr.String(), "err", r.err)
				}
				lanErrs = append(lanErrs, r.err)
			case r.sess != nil:
				relayPending, relay = false, r.sess
				t := time.NewTimer(lanGrace)
				defer t.Stop()
				grace = t.C
			case r.err != nil:
				relayPending, relayErr = false, r.err
			}
		case <-headStart.C:
			headStarted = true
		case <-findFor.C:
			listened = true
		case <-grace:
			graceOver = true
		case <-ctx.Done():
			if relay != nil {
				relay.Close(session.CloseNormal, "dial abandoned")
			}
			return nil, false, raceError(device, context.Cause(ctx), lanErrs)
		}
	}
}

// A lanSearch is a race's search on the LAN: it dials each address heard
// for the device, up to lan.MaxAddrs. It is safe for concurrent use.
type lanSearch struct {
	mu      sync.Mutex
	dials   int  // dials whose result is not in yet; guarded by mu
	finding bool // the search goes on; guarded by mu
	tried   map[netip.AddrPort]bool
}

// state returns how many dials are going and whether the search is.
func (ls *lanSearch) state() (dials int, finding bool) {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	return ls.dials, ls.finding
}

// dialed notes that a dial's result is in.
func (ls *lanSearch) dialed() {
	ls.mu.Lock()
	ls.dials--
	ls.mu.Unlock()
}

// searchLAN looks for device on the LAN until findCtx ends (or the dial's
// deadline passes) and dials, within ctx, every address it is heard at;
// send gets each dial's outcome, and an empty one when the search ends.
func (c *Client) searchLAN(ctx, findCtx context.Context, device identity.ID, send func(dialed)) *lanSearch {
	ls := &lanSearch{finding: true, tried: make(map[netip.AddrPort]bool)}
	heard := func(f lan.Found) {
		ls.mu.Lock()
		defer ls.mu.Unlock()
		for _, ap := range f.Addrs {
			if !ls.tried[ap] && len(ls.tried) < lan.MaxAddrs {
				ls.tried[ap] = true
				ls.dials++
				c.wg.Go(func() {
					s, err := c.agent.DialLAN(ctx, device, ap)
					send(dialed{sess: s, err: err, addr: ap})
				})
			}
		}
	}
	c.wg.Go(func() {
		timeout := lanFindFor
		if d, ok := ctx.Deadline(); ok {
			timeout = max(timeout, time.Until(d))
		}
		_, err := lan.Find(findCtx, lan.FindConfig{Interface: c.cfg.LANInterface, Timeout: timeout, Heard: heard}, []identity.ID{device})
		if err != nil {
			c.log.Debug("no search on the LAN", "err", err)
		}
		ls.mu.Lock()
		ls.finding = false
		ls.mu.Unlock()
		send(dialed{}) // wakes the race
	})
	return ls
}

// raceError is the error of a dial that failed over the relay (relayErr)
// and on the LAN (lanErrs, one per address tried there). A key mismatch on
// the LAN comes first: someone there claims to be the device.
func raceError(device identity.ID, relayErr error, lanErrs []error) error {
	for _, err := range lanErrs {
		if errors.Is(err, identity.ErrKeyMismatch) {
			return err
		}
	}
	if len(lanErrs) > 0 {
		return fmt.Errorf("%w; on the LAN, device %s answered but no session started: %w", relayErr, device.Short(), errors.Join(lanErrs...))
	}
	return fmt.Errorf("%w (nor did it answer on the LAN)", relayErr)
}
