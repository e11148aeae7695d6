package relaylink

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/internal/backoff"
	"github.com/burrow-tunnel/burrow/relayproto"
)

// stableLink is how long a Link must last for the backoff to start again
// from its minimum.
const stableLink = 10 * time.Second

// Config configures an [Attacher], and [Dial] (which uses the fields that
// say who dials and how).
type Config struct {
	// Relay is the relay to attach to. Required. If its ID pins a fleet,
	// it is where the agent first learns the fleet's map: from then on
	// the Attacher attaches to the relays of the map (see Fallback).
	Relay RelayConfig
	// Fallback lists more relay addresses, tried in turn after
	// Relay.Addr, each checked as Relay says (ID, RootCAs): other relays of
	// the fleet Relay.ID pins, or other addresses of the same relay. Once
	// a relay pinned by its fleet's ID has shown the fleet map, an
	// [Attacher] tries the map's relays instead, in the order
	// [fleet.Order] gives for OrderKey and Region: the first is the
	// agent's home relay, and the others, in turn, take it while home is
	// down. [Dial] does not use Fallback. Empty: Relay alone.
	Fallback []string
	// Region is the agent's region among the fleet's relays: those of the
	// region come first in its order (see [fleet.Order]). Empty means
	// none: every relay of the map, by the same hash.
	Region string
	// OrderKey is the ID whose order of the fleet's relays the agent
	// follows ([fleet.Order]). Zero means Identity's ID, as a device's
	// (and a client's own relay) should be.
	OrderKey identity.ID
	// HomeInterval is how long, at least, an agent attached to a relay
	// other than its home stays before trying home again: it dials home
	// after a random time in [HomeInterval, 2·HomeInterval) and moves
	// there only once attached, leaving the other relay then. A newer
	// fleet map that names another home, or no longer lists the relay
	// the agent is on, makes it try at once. Zero means 30s.
	HomeInterval time.Duration
	// KeepRelay keeps the Attacher on the relay it attached to for as long
	// as that relay works and stays in the fleet map: it moves when it
	// loses it, but never home. A client sets it: the relay it was given
	// is where its device was found, and a move while a session starts
	// would lose the device's first answers.
	KeepRelay bool
	// Stay keeps the Attacher on Relay (and Fallback): it does not follow
	// the order of a fleet map, nor move. A client's link to the relay a
	// redirect named stays there, where the device is.
	Stay bool
	// Identity is the agent's key. Required.
	Identity *identity.Identity
	// Role is the agent's role on the relay. Required.
	Role relayproto.Role
	// Instance tells the relay which process of a client's ID this is;
	// zero for a device.
	Instance uint64
	// Dial opens the TCP connection to the relay. Nil uses a [net.Dialer].
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// Logger receives attach and detach events. Nil discards them.
	Logger *slog.Logger
	// QueueLen bounds the frames waiting to be sent; beyond it packets are
	// dropped. Zero means 1024.
	QueueLen int
	// MinBackoff and MaxBackoff bound the wait between attach attempts.
	// Zero means 250ms and 8s.
	MinBackoff, MaxBackoff time.Duration
	// ReattachSpread spreads the return of agents that lost the relay at
	// the same moment (it crashed or restarted: their connections were
	// closed or reset together). After such a loss the agent waits a
	// random time in [0, ReattachSpread) before its first attempt, and at
	// least a random time in [ReattachSpread/2, ReattachSpread) between
	// attempts until it is attached again, so that a relay coming back
	// sees its agents return evenly over ReattachSpread rather than all
	// at once. A Link lost to silence ([ErrIdle], [ErrSilent]) is not
	// spread: its agents noticed at different moments already. Nor is a
	// move to another relay (see Fallback): only the return to the one
	// that went down waits. Zero means no spread.
	ReattachSpread time.Duration
	// EnrollToken, for a device, is presented to a relay that has not
	// enrolled it yet: at each attach until the relay first admits the
	// device, and never after, so that a device the relay's operator
	// removes is not enrolled again by it. Empty presents none.
	EnrollToken string
	// OnEnrolled, if set, is called once when the relay first admits a
	// device that has an EnrollToken, on the attach loop's goroutine: it
	// must not block.
	OnEnrolled func()
	// Access, for a device, says who may reach it: the client IDs, and the
	// relay tokens of its pending invites. It is asked at every attach and
	// after [Attacher.AccessChanged]. Nil lets no one through.
	Access func() (clients []identity.ID, invites [][32]byte)
	// OnAttach, if set, is called with every new Link once it is attached,
	// on the attach loop's goroutine: it must not block.
	OnAttach func(*Link)
	// OnPacket takes every packet the relay delivers, on the reader's
	// goroutine; it must not block, and it releases the packet. Nil
	// releases them.
	OnPacket func(*Packet)
	// OnPeerGone, if set, is called (on the reader's goroutine; it must
	// not block) when the relay could not deliver to a peer.
	OnPeerGone func(relayproto.PeerGone)
	// OnRemoved, if set, is called (on the attach loop's goroutine; it
	// must not block) when the relay sends the agent away because its
	// operator removed it (go-away reason removed): a device then ends
	// the sessions it has, which may not even pass through the relay.
	OnRemoved func()
	// OnRedirect, if set, is called (on the reader's goroutine; it must
	// not block) when the relay, one of a fleet, says that a device this
	// client sent to is attached to another relay of the fleet.
	OnRedirect func(relayproto.Redirect)
}

func (cfg *Config) setDefaults() {
	if cfg.QueueLen == 0 {
		cfg.QueueLen = 1024
	}
	if cfg.MinBackoff == 0 {
		cfg.MinBackoff = 250 * time.Millisecond
	}
	if cfg.MaxBackoff == 0 {
		cfg.MaxBackoff = 8 * time.Second
	}
	if cfg.Dial == nil {
		d := &net.Dialer{KeepAlive: -1}
		cfg.Dial = d.DialContext
	}
	if cfg.OrderKey.IsZero() && cfg.Identity != nil {
		cfg.OrderKey = cfg.Identity.ID()
	}
	if cfg.HomeInterval == 0 {
		cfg.HomeInterval = 30 * time.Second
	}
}

// Status describes an [Attacher]'s attachment.
type Status struct {
	Attached     bool          `json:"attached"`
	Draining     bool          `json:"draining,omitempty"` // the relay is shutting down: it closes this link soon
	Relay        string        `json:"relay"`              // the relay's address (while detached, the one tried last)
	RelayID      identity.ID   `json:"relay_id,omitzero"`  // proven by the relay on this link
	Since        time.Time     `json:"since"`              // when the current state began
	ObservedAddr string        `json:"observed,omitempty"` // our address as the relay sees it
	RTT          time.Duration `json:"rtt,omitempty"`
	// LastError is why the last attach attempt or link failed; nil
	// while attached. Error is its text, which survives JSON.
	LastError error  `json:"-"`
	Error     string `json:"error,omitempty"`
}

// An Attacher keeps an agent attached to a relay: it dials a [Link],
// serves it until it ends, and dials again, until closed. With several
// relays (Config.Fallback, or a fleet's map), it tries them in turn and
// keeps to the agent's home relay when it can. Create it with [Attach];
// it is safe for concurrent use.
type Attacher struct {
	cfg  Config // EnrollToken is the attach loop's
	move mover  // the relays it attaches to; the attach loop's
	log  *slog.Logger
	cur  atomic.Pointer[Link] // nil while detached
	done chan struct{}        // closed when the attach loop returns

	// preferNext is the relay a draining relay named for this agent's
	// next attach: tried first in the next round. Set by a Link's reader.
	preferNext atomic.Pointer[identity.ID]

	ctx    context.Context
	cancel context.CancelFunc

	// wanted wakes an attach loop that waits for a reason to attach (after
	// the relay closed an unused client): a packet to send, or a wait for
	// attachment.
	wanted chan struct{}

	mu      sync.Mutex
	status  Status        // guarded by mu
	changed chan struct{} // closed and replaced on every status change; guarded by mu

	stateMu      sync.Mutex
	intents      map[identity.ID][32]byte // a client's pairing intents; guarded by stateMu
	stateVersion uint64                   // counts changes to the state; guarded by stateMu
}

// Attach starts keeping an agent attached to cfg.Relay, or to the other
// relays cfg names.
func Attach(cfg Config) *Attacher {
	cfg.setDefaults()
	a := &Attacher{
		cfg:     cfg,
		log:     cfg.Logger,
		done:    make(chan struct{}),
		wanted:  make(chan struct{}, 1),
		changed: make(chan struct{}),
		status:  Status{Relay: cfg.Relay.Addr, Since: time.Now()},
	}
	a.move.init(cfg)
	if a.log == nil {
		a.log = slog.New(slog.DiscardHandler)
	}
	a.ctx, a.cancel = context.WithCancel(context.Background())
	go func() {
		defer close(a.done)
		a.loop()
	}()
	return a
}

// Close detaches and waits for the attach loop. It is idempotent.
func (a *Attacher) Close() {
	a.cancel()
	<-a.done
}

// Send sends a packet to dst over the current Link. It never blocks: it
// reports false, having dropped the packet, when detached (and then wants
// the relay: see [Attacher.WaitAttached]) or when the Link's queue is full.
func (a *Attacher) Send(dst relayproto.Addr, p []byte) bool {
	l := a.cur.Load()
	if l == nil {
		a.want()
		return false
	}
	return l.Send(dst, p)
}

// Locate asks the relay, over the current Link, where the device is
// attached (see [Link.Locate]); it does nothing while detached.
func (a *Attacher) Locate(device identity.ID) {
	if l := a.cur.Load(); l != nil {
		l.Locate(device)
	}
}

// Drain waits, up to timeout, until the current Link has written what is
// queued on it.
func (a *Attacher) Drain(timeout time.Duration) {
	if l := a.cur.Load(); l != nil {
		l.Drain(timeout)
	}
}

// Status returns the attachment's state.
func (a *Attacher) Status() Status {
	st, _ := a.Watch()
	if st.LastError != nil {
		st.Error = st.LastError.Error()
	}
	return st
}

// Watch returns the attachment's state and a channel closed when it
// next changes.
func (a *Attacher) Watch() (Status, <-chan struct{}) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.status, a.changed
}

// setStatus applies f to the status and wakes every waiter.
func (a *Attacher) setStatus(f func(*Status)) {
	a.mu.Lock()
	defer a.mu.Unlock()
	f(&a.status)
	close(a.changed)
	a.changed = make(chan struct{})
}

// WaitAttached waits until the agent is attached to the relay. It returns
// early with the attach error if an attempt failed for a reason that
// retrying will not fix by itself (a key mismatch, a refusal); the
// Attacher keeps retrying in the background all the same. It returns
// [ErrClosed] once the Attacher is closed.
func (a *Attacher) WaitAttached(ctx context.Context) error {
	for {
		st, ch := a.Watch()
		if st.Attached {
			return nil
		}
		// After the status it read, so that an attach loop that has just
		// detached (and forgotten earlier wants) sees this one.
		a.want()
		if st.LastError != nil && isPermanent(st.LastError) {
			return st.LastError
		}
		select {
		case <-ch:
		case <-a.ctx.Done():
			return ErrClosed
		case <-ctx.Done():
			if st.LastError != nil {
				return fmt.Errorf("not attached to relay %s: %w", st.Relay, st.LastError)
			}
			return fmt.Errorf("not attached to relay %s yet: %w", st.Relay, context.Cause(ctx))
		}
	}
}

// want tells the attach loop that the relay is wanted now.
func (a *Attacher) want() {
	select {
	case a.wanted <- struct{}{}:
	default:
	}
}

// unwant forgets that the relay was wanted.
func (a *Attacher) unwant() {
	select {
	case <-a.wanted:
	default:
	}
}

// waitWanted waits until the relay is wanted (see want), d has passed or
// the Attacher closes.
func (a *Attacher) waitWanted(d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-a.wanted:
	case <-t.C:
	case <-a.ctx.Done():
	}
}

func (a *Attacher) sleep(d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-a.ctx.Done():
	}
}

// spread returns a random wait in [from·ReattachSpread, ReattachSpread).
func (a *Attacher) spread(from float64) time.Duration {
	s := a.cfg.ReattachSpread
	lo := time.Duration(from * float64(s))
	return lo + rand.N(s-lo)
}

// AccessChanged tells the relay that Config.Access would now answer
// differently: the new list is sent now if attached (and on every attach,
// as always).
func (a *Attacher) AccessChanged() {
	a.stateMu.Lock()
	a.stateVersion++
	a.stateMu.Unlock()
	a.sendState()
}

// SetPairIntent tells the relay that this client is pairing with device
// using the invite whose relay token is token, so that the relay lets it
// through while the device lists the token.
func (a *Attacher) SetPairIntent(device identity.ID, token [32]byte) {
	a.stateMu.Lock()
	if a.intents == nil {
		a.intents = make(map[identity.ID][32]byte)
	}
	a.intents[device] = token
	a.stateVersion++
	a.stateMu.Unlock()
	a.sendState()
}

// ClearPairIntent forgets the pairing intent for device; it is not sent
// on later Links.
func (a *Attacher) ClearPairIntent(device identity.ID) {
	a.stateMu.Lock()
	delete(a.intents, device)
	a.stateMu.Unlock()
}

// sendState sends the state over the current Link, if any.
func (a *Attacher) sendState() {
	if l := a.cur.Load(); l != nil {
		st, _ := a.state()
		l.SendState(st)
	}
}

// state returns the agent's state, with the version it reflects.
func (a *Attacher) state() (State, uint64) {
	a.stateMu.Lock()
	defer a.stateMu.Unlock()
	var st State
	if a.cfg.Role == relayproto.RoleDevice && a.cfg.Access != nil {
		st.Access = AccessList(a.cfg.Access())
	}
	for dev, tok := range a.intents {
		st.Intents = append(st.Intents, relayproto.PairIntent{Device: dev, Token: tok})
	}
	return st, a.stateVersion
}

// loop keeps the agent attached to a relay until the Attacher is closed.
func (a *Attacher) loop() {
	b := backoff.Backoff{Min: a.cfg.MinBackoff, Max: a.cfg.MaxBackoff}
	var (
		spreading bool  // returning to a relay that dropped everyone (ReattachSpread)
		next      retry // when to dial what, after a loss
	)
	next.lost = -1
	for a.ctx.Err() == nil {
		l, version, err := a.dialRound(next)
		next = retry{lost: -1}
		if err != nil {
			if a.ctx.Err() != nil {
				return
			}
			if isPermanent(err) {
				b.N = 64 // only a configuration change helps: retry slowly
			}
			wait := b.Next()
			if spreading {
				wait = max(wait, a.spread(0.5))
			}
			a.sleep(wait)
			continue
		}
		spreading = false
		start := time.Now()
		a.attached(l, version, start)
		l, start, end := a.run(l, start)
		// Wants from while attached do not count; from here on, every
		// one does (see WaitAttached, Send).
		a.unwant()
		a.cur.Store(nil)
		if a.ctx.Err() != nil {
			return
		}
		a.setStatus(func(s *Status) { s.Attached, s.Draining, s.LastError, s.Since = false, false, end.err, time.Now() })
		lasted := time.Since(start)
		if lasted >= stableLink {
			b.Reset()
		}
		wait := b.Next()
		others := wait // before another relay: see retry
		switch ga := end.goAway; {
		case ga != nil && ga.Reason == relayproto.GoAwayUnused:
			// No device on the relay allows this client: it is of no use
			// there until it has something to send (a tunnel to open, a
			// packet of a session), or, to keep its status fresh, until
			// the relay's wait is over; never sooner than the backoff, so
			// that a relay that says so at once cannot make it loop.
			retry := time.Duration(ga.RetryAfterMillis) * time.Millisecond
			a.log.Info("relay closed this client's session: no device there allows it now; attaching again when there is something to send",
				"retry_in", max(retry, wait).String())
			since := time.Now()
			a.waitWanted(max(retry, wait))
			a.sleep(wait - time.Since(since))
			continue
		case ga != nil:
			if ga.Reason == relayproto.GoAwayRemoved && a.cfg.OnRemoved != nil {
				a.cfg.OnRemoved()
			}
			wait = max(wait, time.Duration(ga.RetryAfterMillis)*time.Millisecond)
			if ga.Reason == relayproto.GoAwayShutdown {
				// Its wait is for coming back to it.
				others = a.move.others(lasted, others)
			} else {
				// Replaced, removed, idle: another relay would
				// say the same.
				others = wait
			}
		case a.cfg.ReattachSpread > 0 && !errors.Is(end.err, ErrIdle) && !errors.Is(end.err, ErrSilent):
			// Closed or reset without a word: the relay (or its host)
			// went down, for every agent at once.
			spreading = true
			wait = max(wait, a.spread(0))
			others = a.move.others(lasted, others)
		default:
			others = a.move.others(lasted, others)
		}
		next = a.move.after(l, wait, others)
		attrs := []any{"relay", l.addr, "err", end.err, "after", lasted.Round(time.Millisecond).String(), "retry_in", wait.Round(time.Millisecond).String()}
		if n := a.move.list; len(n) > 1 {
			attrs = append(attrs, "others_in", others.Round(time.Millisecond).String())
		}
		if end.drained {
			// Announced: the relay said it would close the link.
			a.log.Info("detached from draining relay", attrs...)
		} else {
			a.log.Warn("detached from relay", attrs...)
		}
	}
}

// attached makes l the current Link: it sends the state that changed
// since version (while attaching), says so, and stops presenting the
// enrollment token.
func (a *Attacher) attached(l *Link, version uint64, start time.Time) {
	a.cur.Store(l)
	if st, v := a.state(); v != version {
		l.SendState(st)
	}
	a.setStatus(func(s *Status) {
		*s = Status{Attached: true, Relay: l.addr, RelayID: l.relayID, Since: start, ObservedAddr: l.observed}
	})
	a.log.Info("attached to relay", "relay", l.addr, "relay_id", l.relayID.String(), "observed_addr", l.observed)
	if a.cfg.EnrollToken != "" {
		// Admitted, so enrolled: the token is not sent again (only
		// the attach loop reads it).
		a.cfg.EnrollToken = ""
		if a.cfg.OnEnrolled != nil {
			a.cfg.OnEnrolled()
		}
	}
	if a.cfg.OnAttach != nil {
		a.cfg.OnAttach(l)
	}
}

// ended says how a Link ended: why, the relay's go-away if it sent one,
// and whether it announced a drain.
type ended struct {
	err     error
	goAway  *relayproto.GoAway
	drained bool
}

// serve reads l until it ends, then closes it, and says how it ended.
func (a *Attacher) serve(l *Link) ended {
	defer l.Close()
	drained := false
	for {
		m, err := l.Read()
		if err != nil {
			return ended{err: err, drained: drained}
		}
		switch m := m.(type) {
		case *Packet:
			if a.cfg.OnPacket != nil {
				a.cfg.OnPacket(m)
			} else {
				m.Release()
			}
		case relayproto.PeerGone:
			if a.cfg.OnPeerGone != nil {
				a.cfg.OnPeerGone(m)
			}
		case relayproto.Redirect:
			if m.Peer.ID == a.cfg.Identity.ID() {
				// A draining relay of the fleet says where this agent
				// goes when it closes.
				id := m.Relay
				a.preferNext.Store(&id)
				a.log.Info("the relay names the relay of the fleet to go to when it closes", "next", m.Addr)
			} else if a.cfg.OnRedirect != nil {
				a.cfg.OnRedirect(m)
			}
		case Pong:
			a.setStatus(func(s *Status) { s.RTT = m.RTT })
		case relayproto.Drain:
			// Nothing changes here: the Link, and the E2E sessions on
			// it, go on until the relay closes it with a go-away; the
			// reattach after that is the usual one.
			if !drained {
				drained = true
				a.setStatus(func(s *Status) { s.Draining = true })
				attrs := []any{"msg", m.Message}
				if m.WithinMillis != 0 {
					attrs = append(attrs, "closes_within", (time.Duration(m.WithinMillis) * time.Millisecond).String())
				}
				a.log.Info("relay is draining: keeping this session and its tunnels until the relay closes it", attrs...)
			}
		case relayproto.GoAway:
			return ended{goAway: &m, drained: drained, err: fmt.Errorf("relay said go away: %s (%s)", m.Reason, m.Message)}
		}
	}
}
