// Package device is burrow's dispatcher: the agent on a device behind NAT.
// It stays attached to a relay, accepts E2E sessions from clients and, for
// each tunnel a client opens, checks that client's rights to the named
// service, dials the address configured for that service (never an address
// from the wire) and joins the two connections, or hands the tunnel to the
// Go code that serves the service in the device's own process
// ([Config.Handlers], handler.go).
//
// Access is denied by default. A client reaches nothing unless it is listed
// in the configuration or has paired with an invite (pair.go), and then
// only the services of its role; revocation closes its sessions at once.
// The device tells its relay who may reach it, so that the relay drops
// everyone else's packets, but decides every tunnel itself.
//
// The path layer, the end-to-end endpoint and the serving of control
// streams are package agent's, as on a client; this package holds the
// dispatcher's policy: its configuration ([Config]), who may open a
// session, a tunnel or a control stream (stream.go), pairing and users
// (pair.go, pairguard.go) and their store (store.go), and the admin API
// (admin.go). It must never dial an address a client sent, nor let the
// relay decide who gets in.
package device

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/burrow-tunnel/burrow/agent"
	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/lan"
	"github.com/burrow-tunnel/burrow/pairing"
	"github.com/burrow-tunnel/burrow/paths"
	"github.com/burrow-tunnel/burrow/relaylink"
	"github.com/burrow-tunnel/burrow/relayproto"
	"github.com/burrow-tunnel/burrow/session"
)

// AllServices, in a list of services, grants every service.
const AllServices = "*"

// Config configures a [Device].
type Config struct {
	// Identity is the device's key; clients pin its ID. Required.
	Identity *identity.Identity
	// Name is what the device calls itself in invites. Optional.
	Name string
	// Relay is the relay the device attaches to. Required.
	Relay relaylink.RelayConfig
	// RelayFallback lists more addresses of relays checked as Relay says
	// (other relays of the fleet Relay.ID pins), tried in turn when Relay
	// is down; Region is the device's region among a fleet's relays. See
	// [relaylink.Config.Fallback] and [relaylink.Config.Region]. Empty:
	// Relay alone, and no region.
	RelayFallback []string
	Region        string
	// EnrollToken is presented to a relay that has not enrolled this
	// device yet, until the relay first admits the device (see
	// [paths.Config.EnrollToken]). Optional.
	EnrollToken string
	// OnEnrolled, if set, is called once when the relay first admits the
	// device while it has an EnrollToken: the token is no longer needed.
	// It must not block. Nil logs that the token can be deleted.
	OnEnrolled func()
	// Services maps a service name to the host:port it is served on. These
	// are the only addresses the device ever dials. Nil or empty: none,
	// which only a device with Handlers may have.
	Services map[string]string
	// Handlers maps a service name to the Go code that serves it in this
	// process ([ServeConn], [ServeHTTP]): no socket, no dial. A name is
	// in Services or in Handlers, not both. Roles, clients, pairing, rate
	// limits and metrics treat these services as they treat those of
	// Services. [Device.Reload] does not change them. Nil: none.
	Handlers map[string]Handler
	// Roles maps a role name to the services it grants ([AllServices] for
	// all). Paired clients have a role. Nil: no roles, so no invites.
	Roles map[string][]string
	// Clients maps a client ID to the services it may open ([AllServices]
	// for all): users fixed by the configuration. Nil or empty: none.
	Clients map[identity.ID][]string
	// StateDir holds the paired users and pending invites. Empty disables
	// pairing: only Clients get in. [New] refuses a directory that a user
	// other than the agent's or root owns, or that others may write (or
	// one below such a directory): that user could decide who gets in.
	StateDir string
	// Logger receives one line per significant event. Nil discards logs.
	Logger *slog.Logger
	// DialRelay opens the TCP connection to the relay. Nil uses net.Dialer.
	DialRelay func(ctx context.Context, network, addr string) (net.Conn, error)
	// DialService dials a service's configured address. Nil uses
	// net.Dialer. The connection must support CloseWrite (a TCP connection
	// does), so that half-closes pass through.
	DialService func(ctx context.Context, network, addr string) (net.Conn, error)
	// ServiceDialTimeout bounds dialing a service. Zero means 5s.
	ServiceDialTimeout time.Duration
	// Direct configures direct paths to clients (on unless disabled).
	Direct paths.DirectOptions
	// TunnelRate bounds how many tunnels per second one client may open,
	// with bursts of TunnelBurst; past it, opens are refused as rate
	// limited. Zero means 100 per second, bursts of 1,000.
	TunnelRate  float64
	TunnelBurst int
	// NoLAN keeps the device off the LAN: it neither announces itself
	// there nor takes sessions that start there. False: it announces
	// its direct-path UDP port over mDNS on the LAN interfaces, under a
	// tag only those who know its ID can compute (package lan), and
	// takes sessions from addresses on its LAN without its relay, each
	// authorized like every other.
	NoLAN bool
	// LANInterface names the one interface to announce on. Empty: every
	// interface that is up, not loopback and can multicast.
	LANInterface string
	// ReattachSpread spreads this device's return to a relay that dropped
	// every agent at once (see [paths.Config.ReattachSpread]): a relay
	// serving thousands of devices must not get them all back in the same
	// second. Zero means 15s; negative means none.
	ReattachSpread time.Duration
}

// DefaultReattachSpread is a device's ReattachSpread unless configured.
const DefaultReattachSpread = 15 * time.Second

// setDefaults fills in the fields whose zero value means a default.
func (c *Config) setDefaults() {
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.ServiceDialTimeout == 0 {
		c.ServiceDialTimeout = 5 * time.Second
	}
	if c.TunnelRate == 0 {
		c.TunnelRate = 100
	}
	if c.TunnelBurst == 0 {
		c.TunnelBurst = 1000
	}
	switch {
	case c.ReattachSpread == 0:
		c.ReattachSpread = DefaultReattachSpread
	case c.ReattachSpread < 0:
		c.ReattachSpread = 0
	}
	if c.DialService == nil {
		d := &net.Dialer{}
		c.DialService = d.DialContext
	}
}

func (c *Config) validate() error {
	if c.Identity == nil {
		return errors.New("device: Config.Identity is required")
	}
	if c.Name != "" {
		if err := pairing.ValidName(c.Name); err != nil {
			return fmt.Errorf("device: name: %w", err)
		}
	}
	if len(c.Services) == 0 && len(c.Handlers) == 0 {
		return errors.New("device: no services configured: list at least one under services")
	}
	if err := c.validateHandlers(); err != nil {
		return err
	}
	for name, addr := range c.Services {
		if err := session.ValidService(name); err != nil {
			return fmt.Errorf("device: services: %w", err)
		}
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return fmt.Errorf("device: service %s: address %q: want host:port", name, addr)
		}
	}
	check := func(who string, svcs []string) error {
		for _, s := range svcs {
			if s == AllServices {
				continue
			}
			_, addr := c.Services[s]
			_, handler := c.Handlers[s]
			if !addr && !handler {
				return fmt.Errorf("device: %s: service %q is not defined under services (defined: %s)",
					who, s, joinSorted(append(slices.Collect(maps.Keys(c.Services)), slices.Collect(maps.Keys(c.Handlers))...)))
			}
		}
		return nil
	}
	for role, svcs := range c.Roles {
		if err := pairing.ValidName(role); err != nil {
			return fmt.Errorf("device: roles: %w", err)
		}
		if err := check("role "+role, svcs); err != nil {
			return err
		}
	}
	for id, svcs := range c.Clients {
		if id.IsZero() {
			return errors.New("device: clients: zero client ID")
		}
		if err := check("client "+id.String(), svcs); err != nil {
			return err
		}
	}
	return nil
}

func joinSorted(names []string) string {
	slices.Sort(names)
	return strings.Join(names, ", ")
}

// A Device is a running dispatcher. Create it with [New]; it is safe for
// concurrent use.
type Device struct {
	cfg Config
	// pol is what cfg says of services, roles and clients, which Reload
	// replaces (cfg's own fields keep their first values).
	pol atomic.Pointer[Policy]
	log *slog.Logger
	st  *store // nil without a state directory

	agent *agent.Agent
	ln    *session.Listener
	lan   *lan.Follower // nil when the device is not announced on the LAN
	// lanStatus says why lan is nil; set by New.
	lanStatus string
	// handlers are the running in-process services, by name; set by New
	// and never changed.
	handlers map[string]*handlerService

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	// revokeMu orders saving a revocation and pairing, so that saving a
	// revocation late never deletes the client's new pairing. It is taken
	// before mu.
	revokeMu sync.Mutex

	// mu guards the fields below.
	mu       sync.Mutex
	closed   bool
	users    map[identity.ID]User              // paired users
	invites  map[[32]byte]pendingInvite        // by verifier
	guards   pairGuards                        // of pairing, per client and per invite
	sessions map[*session.Session]*sessionInfo // open ones
	unknown  int                               // sessions of clients not known when they opened, within unknownGrace
	limits   map[identity.ID]*rate.Limiter     // tunnel opens, per client
	// unsaved holds the users revoked while the state directory could not
	// be written: shut out, but still in the store.
	unsaved map[identity.ID]User
	seenLog failureLog
	// pairLog rate-limits refusal warnings; pairLogSkipped counts those
	// not logged since the last one.
	pairLog        *rate.Limiter
	pairLogSkipped int

	counters counters // for Metrics
}

// A sessionInfo is what the device keeps of one open session.
type sessionInfo struct {
	since   time.Time
	tunnels int  // open now; guarded by Device.mu
	total   int  // opened in this session; guarded by Device.mu
	control bool // the control stream is open; guarded by Device.mu
}

// New starts a device: it attaches to the relay in the background and
// serves clients until [Device.Close].
func New(cfg Config) (*Device, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	cfg.setDefaults()
	d := &Device{
		cfg:      cfg,
		log:      cfg.Logger,
		users:    make(map[identity.ID]User),
		invites:  make(map[[32]byte]pendingInvite),
		sessions: make(map[*session.Session]*sessionInfo),
		limits:   make(map[identity.ID]*rate.Limiter),
		unsaved:  make(map[identity.ID]User),
		pairLog:  rate.NewLimiter(pairLogRate, pairLogBurst),
	}
	d.pol.Store(&Policy{Services: cfg.Services, Roles: cfg.Roles, Clients: cfg.Clients})
	d.cfg.Handlers = maps.Clone(cfg.Handlers)
	d.counters.addServices(maps.Keys(cfg.Services))
	d.counters.addServices(maps.Keys(cfg.Handlers))
	if cfg.StateDir != "" {
		if err := d.openState(); err != nil {
			return nil, fmt.Errorf("device: %w", err)
		}
	}
	if len(cfg.Clients) == 0 && len(d.users) == 0 {
		if len(cfg.Roles) == 0 || d.st == nil {
			d.log.Warn("no clients configured and no way to pair: no one can reach this device's services")
		} else {
			d.log.Info("no clients yet: make an invite with burrow device invite")
		}
	}
	onEnrolled := cfg.OnEnrolled
	if onEnrolled == nil {
		onEnrolled = func() {
			d.log.Info("admitted by the relay (enrolled, or listed there): the enrollment token is no longer needed (it is not sent again); delete it from where it is configured")
		}
	}
	a, err := agent.Start(paths.Config{
		Identity:       cfg.Identity,
		Role:           relayproto.RoleDevice,
		Relay:          cfg.Relay,
		RelayFallback:  cfg.RelayFallback,
		Region:         cfg.Region,
		Dial:           cfg.DialRelay,
		Logger:         cfg.Logger,
		EnrollToken:    cfg.EnrollToken,
		OnEnrolled:     onEnrolled,
		OnRemoved:      func() { go d.removedFromRelay() },
		Access:         d.accessList,
		Direct:         cfg.directOptions(),
		ReattachSpread: cfg.ReattachSpread,
	})
	if err != nil {
		d.closeStore()
		return nil, fmt.Errorf("device: %w", err)
	}
	ln, err := a.Listen()
	if err != nil {
		a.Close()
		d.closeStore()
		return nil, fmt.Errorf("device: %w", err)
	}
	d.agent, d.ln = a, ln
	d.announce()
	d.ctx, d.cancel = context.WithCancel(context.Background())
	d.startHandlers()
	d.wg.Go(d.acceptLoop)
	d.wg.Go(d.sweep)
	return d, nil
}

// openState loads the paired users and pending invites from the state
// directory.
func (d *Device) openState() error {
	st, err := openStore(d.cfg.StateDir)
	if err != nil {
		return err
	}
	users, invites, err := st.load()
	if err != nil {
		st.close()
		return err
	}
	d.st, d.users, d.invites = st, users, invites
	if err := st.writable(); err != nil {
		d.log.Error("the device state cannot be saved: invites and pairing fail, and revocations last only until a restart, until it can; paired users can still connect",
			"err", err, "users", len(users), "invites", len(invites))
	}
	return nil
}

func (d *Device) closeStore() {
	if d.st != nil {
		d.st.close()
	}
}

// ID returns the device's ID.
func (d *Device) ID() identity.ID { return d.cfg.Identity.ID() }

// WaitAttached waits until the device is attached to its relay; see
// [paths.Conn.WaitAttached].
func (d *Device) WaitAttached(ctx context.Context) error {
	return d.agent.Paths().WaitAttached(ctx)
}

// Close closes every session and tunnel, detaches from the relay and waits
// for every goroutine the device started, and for the in-process services'
// handlers to return (see [ServeConn] and [ServeHTTP]). It is idempotent.
func (d *Device) Close() error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		d.wg.Wait()
		return nil
	}
	d.closed = true
	sessions := slices.Collect(maps.Keys(d.sessions))
	d.mu.Unlock()
	for _, s := range sessions {
		s.Close(session.CloseShutdown, "device is shutting down")
	}
	d.cancel()
	d.ln.Close()
	if d.lan != nil {
		d.lan.Close()
	}
	d.stopHandlers()
	d.wg.Wait()
	err := d.agent.Close()
	d.closeStore()
	return err
}

// access returns the services client may open, and whether the device
// knows client at all.
func (d *Device) access(client identity.ID) ([]string, bool) {
	if svcs, ok := d.policy().Clients[client]; ok {
		return svcs, true
	}
	d.mu.Lock()
	u, ok := d.users[client]
	d.mu.Unlock()
	if !ok {
		return nil, false
	}
	return d.policy().Roles[u.Role], true
}

// accessList is who may reach this device, for the relay: every user, and
// the relay tokens of pending invites. paths calls it; it must not call
// paths.
func (d *Device) accessList() ([]identity.ID, [][32]byte) {
	d.mu.Lock()
	defer d.mu.Unlock()
	clients := slices.Collect(maps.Keys(d.policy().Clients))
	for id := range d.users {
		if _, dup := d.policy().Clients[id]; !dup {
			clients = append(clients, id)
		}
	}
	var tokens [][32]byte
	now := time.Now()
	for _, in := range d.invites {
		if now.Before(in.Expires) {
			tokens = append(tokens, in.RelayToken)
		}
	}
	return clients, tokens
}

// unknownGrace is how long a client the device does not know may keep a
// session open, to pair.
const unknownGrace = time.Minute

// maxUnknown bounds the sessions of clients the device does not know yet
// (pairing, or about to): past it, one more is refused. Pairing takes one
// each, for a moment.
const maxUnknown = 64

func (d *Device) acceptLoop() {
	for {
		s, err := d.ln.Accept(d.ctx)
		if err != nil {
			if d.ctx.Err() == nil {
				d.log.Error("accepting sessions failed", "err", err)
			}
			return
		}
		_, known := d.access(s.PeerID())
		if !known && !d.pairable() {
			d.refusalWarn(d.log, "session refused: unknown client", "client", s.PeerID().String())
			s.Close(session.CloseNotAuthorized, fmt.Sprintf("client %s is not authorized on device %s", s.PeerID().Short(), d.ID().Short()))
			continue
		}
		d.mu.Lock()
		if d.closed {
			d.mu.Unlock()
			s.Close(session.CloseShutdown, "device is shutting down")
			return
		}
		if !known && d.unknown >= maxUnknown {
			d.mu.Unlock()
			d.refusalWarn(d.log, "session refused: too many sessions of unknown clients at once", "client", s.PeerID().String())
			s.Close(session.CloseNotAuthorized, "too many clients pairing at once: try again in a minute")
			continue
		}
		d.sessions[s] = &sessionInfo{since: time.Now()}
		if !known {
			d.unknown++
		}
		d.mu.Unlock()
		d.counters.sessionsStarted.Add(1)
		if !known {
			// Time to pair, and no more.
			d.wg.Go(func() {
				defer func() {
					d.mu.Lock()
					d.unknown--
					d.mu.Unlock()
				}()
				t := time.NewTimer(unknownGrace)
				defer t.Stop()
				select {
				case <-t.C:
					if _, ok := d.access(s.PeerID()); !ok {
						s.Close(session.CloseNotAuthorized, "not paired in time")
					}
				case <-s.Context().Done():
				case <-d.ctx.Done():
				}
			})
		}
		d.wg.Go(func() { d.serveSession(s) })
	}
}

func (d *Device) serveSession(s *session.Session) {
	log := d.log.With("client", s.PeerID().String())
	log.Info("session opened", "addr", s.RemoteAddr().String())
	for {
		in, err := s.AcceptTunnel(d.ctx)
		if err != nil {
			break
		}
		d.wg.Go(func() { d.serveStream(s, in, log) })
	}
	d.mu.Lock()
	info := d.sessions[s]
	delete(d.sessions, s)
	d.mu.Unlock()
	d.counters.sessionsEnded.Add(1)
	d.seen(s.PeerID(), time.Now())
	d.agent.LogClosed(log, s,
		"duration", time.Since(info.since).Round(time.Millisecond).String(), "tunnels", info.total)
}

// removedFromRelay ends every session, when the relay's operator removed
// this device: one on a direct path would otherwise go on, and removing a
// device must cut it off from the relay's service. New sessions through
// the relay do not come, as it no longer admits the device; sessions that
// start on the LAN, which no relay carries or grants, still do (unless
// the device is kept off the LAN).
func (d *Device) removedFromRelay() {
	d.mu.Lock()
	victims := slices.Collect(maps.Keys(d.sessions))
	d.mu.Unlock()
	d.log.Warn("the relay's operator removed this device: ending its sessions", "sessions", len(victims))
	for _, s := range victims {
		s.Close(session.CloseRemoved, "the device was removed from its relay by the relay's operator")
	}
}

// seen records that the paired user client was last seen at t: in
// memory, where the admin API reads it, and in the store, where it
// outlives a restart. The record in memory is set even when the store
// cannot be written, so that the listing never lags the sessions.
func (d *Device) seen(client identity.ID, t time.Time) {
	d.mu.Lock()
	u, paired := d.users[client]
	if paired {
		u.LastSeen = t.UTC()
		d.users[client] = u
	}
	d.mu.Unlock()
	if !paired || d.st == nil {
		return
	}
	err := d.st.touch(client, t)
	d.touched(err)
	if err == nil {
		d.saveRevocations() // the state directory may be writable again
	}
}

// closeSessionsOf closes every session of client with code and msg.
func (d *Device) closeSessionsOf(client identity.ID, code session.CloseCode, msg string) {
	d.mu.Lock()
	var victims []*session.Session
	for s := range d.sessions {
		if s.PeerID() == client {
			victims = append(victims, s)
		}
	}
	d.mu.Unlock()
	for _, s := range victims {
		s.Close(code, msg)
	}
}
