package relay

import (
	"crypto/tls"
	"errors"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/burrow-tunnel/burrow/identity"
)

// Config configures a [Server].
type Config struct {
	// Identity is the relay's key. Agents pin it by its ID. Required.
	Identity *identity.Identity

	// GetCertificate, if set, supplies the TLS certificate (for example a
	// CA-signed one that agents check against their trusted roots). If nil,
	// the relay serves a self-signed certificate of Identity's key. Agents
	// that pin the relay's ID accept only that certificate: a TLS
	// configuration from [Server.TLSConfig] serves it to them (they ask with
	// [relayproto.ALPNPinned]); one made otherwise must do the same.
	GetCertificate func(*tls.ClientHelloInfo) (*tls.Certificate, error)

	// FleetMap, if set, makes the relay a member of a fleet: it returns
	// the fleet's current signed map (package fleet), which the relay
	// carries in the self-signed certificate it serves agents that pin an
	// ID, so that agents pinning the fleet's ID accept it. It is called at
	// every such TLS handshake and may return a new map at any time (the
	// certificate is made again when it changes); it must be fast. [New]
	// fails unless the map lists this relay. Nil: no fleet, the relay is
	// pinned by its own ID only.
	FleetMap func() []byte

	// Presence, if set, is told of every device that attaches and
	// detaches, and says where a device attached to another relay of the
	// fleet is. Nil: no fleet, a device not attached here is offline.
	Presence Presence

	// AllowDevice reports whether a device may attach. Nil allows no
	// device: a relay admits only the devices it was told about.
	AllowDevice func(identity.ID) bool

	// UDPPort, if not zero, is the relay's UDP port for binding requests
	// (see ServeUDP): agents are told it, with a token for their
	// attachment.
	UDPPort int

	// NoUDPRelay turns the UDP relay path off. By default (false) a relay
	// with a UDPPort also forwards agents' packets as datagrams there (see
	// [Server.ServeUDP]), and its server hellos offer
	// [relayproto.ExtUDPRelay]; with NoUDPRelay, the UDP port answers
	// binding requests only, and agents relay over TCP alone.
	NoUDPRelay bool

	// Enroll, if set, is asked about a device that AllowDevice does not
	// allow but that presents an enrollment token: nil admits (and
	// enrolls) it, an error refuses it and says why.
	Enroll func(id identity.ID, token string) error

	// Logger receives one line per significant event. Nil discards logs.
	Logger *slog.Logger

	// KeepAlive is how often agents must ping; an agent silent for
	// 3×KeepAlive is detached. Zero means 15s.
	KeepAlive time.Duration

	// HandshakeTimeout bounds the time from connection to authenticated
	// attachment. Zero means 10s.
	HandshakeTimeout time.Duration

	// SendQueueLen is how many frames may wait for each agent; beyond it,
	// packets are dropped (and counted) rather than queued. Zero means 1024.
	SendQueueLen int

	// MaxPendingPerIP bounds the connections one address (an IPv6 /64)
	// may hold open before they authenticate; more are closed at once.
	// Zero means 64. (Only for [Server.Serve]'s own listener.)
	MaxPendingPerIP int

	// MaxPending bounds the connections, from all addresses, that have
	// not authenticated; past it, a new connection closes the oldest.
	// Zero means 10,000. (Only for [Server.Serve]'s own listener.)
	MaxPending int

	// MaxClients bounds the clients attached at once, from all
	// addresses; past it a client is refused as overloaded. Devices are
	// not counted: clients, which need no enrollment and so can be made
	// by anyone, never take a device's place. Zero means 10,000.
	MaxClients int

	// MaxClientsPerIP bounds the attached clients of one address (an IPv6
	// /64); past it a client is refused with [relayproto.RefuseTooMany].
	// Zero means 256.
	MaxClientsPerIP int

	// ClientGrace is how long a client may stay attached while no
	// attached device allows it (names it in its access list, or lists
	// the invite of one of its pairing intents): then the relay detaches it
	// with [relayproto.GoAwayUnused], and the client comes back when it
	// has something to send. Zero means 20s; negative means never.
	ClientGrace time.Duration

	// DrainQuiet ends a drain ([Server.Shutdown]) early once no packet has
	// been forwarded for this long: whatever tunnels are still open are
	// idle. Zero means 5s; negative means only the drain's context, or the
	// last client leaving, ends it.
	DrainQuiet time.Duration
}

func (c *Config) validate() error {
	if c.Identity == nil {
		return errors.New("relay: Config.Identity is required")
	}
	if c.KeepAlive < 0 || c.HandshakeTimeout < 0 || c.SendQueueLen < 0 || c.MaxPendingPerIP < 0 || c.MaxPending < 0 ||
		c.MaxClients < 0 || c.MaxClientsPerIP < 0 {
		return errors.New("relay: negative duration, queue length or limit in Config")
	}
	return nil
}

// settings are a [Config]'s numbers with their defaults filled in.
type settings struct {
	keepAlive    time.Duration
	hsTimeout    time.Duration
	queueLen     int
	quiet        time.Duration // DrainQuiet; 0 if off
	pendingPerIP int
	maxPending   int
	clientLim    clientLimits
}

func (c *Config) settings() settings {
	st := settings{
		keepAlive:    c.KeepAlive,
		hsTimeout:    c.HandshakeTimeout,
		queueLen:     c.SendQueueLen,
		pendingPerIP: c.MaxPendingPerIP,
		maxPending:   c.MaxPending,
		clientLim:    newClientLimits(*c),
	}
	if st.keepAlive == 0 {
		st.keepAlive = 15 * time.Second
	}
	if st.hsTimeout == 0 {
		st.hsTimeout = 10 * time.Second
	}
	if st.queueLen == 0 {
		st.queueLen = 1024
	}
	switch {
	case c.DrainQuiet == 0:
		st.quiet = 5 * time.Second
	case c.DrainQuiet > 0:
		st.quiet = c.DrainQuiet
	}
	if st.pendingPerIP == 0 {
		st.pendingPerIP = 64
	}
	if st.maxPending == 0 {
		st.maxPending = 10_000
	}
	return st
}

// Stats are counters of a [Server]'s work since it started.
type Stats struct {
	Devices, Clients int    // attached now
	Pending          int    // connections of Serve's that have not authenticated yet
	Replaced         uint64 // attachments replaced by a newer one of the same agent
	ClientsRefused   uint64 // clients refused for a limit (per address or in all)
	ClientsUnused    uint64 // clients detached because no device allowed them
	PacketsForwarded uint64 // delivered to a destination's queue
	BytesForwarded   uint64 // packet bytes delivered
	PacketsDropped   uint64 // dropped because a queue was full
	PeerGone         uint64 // peer-gone answers sent
	Redirects        uint64 // clients sent to another relay of the fleet
	UDPAnswered      uint64 // binding requests and binds answered
	UDPIgnored       uint64 // UDP datagrams of no type of the UDP relay path, not answered

	// The UDP relay path (see [Server.ServeUDP]).
	UDPForwarded      uint64 // send datagrams forwarded as recv
	UDPForwardedBytes uint64 // packet bytes of those, without their 13-byte headers
	// UDPDropped counts the datagrams of the UDP relay path dropped
	// without an answer, by reason; every [UDPDrop] has an entry, zero
	// included.
	UDPDropped map[UDPDrop]uint64
	// UDPBindings are the addresses bound to attached agents now;
	// UDPBindingsConfirmed those of them whose tag came back within a
	// minute, which are forwarded to.
	UDPBindings, UDPBindingsConfirmed int

	// Refusals counts the agents sent a refuse frame, by role (zero for
	// one refused before its hello was read) and code; every role and
	// every code of [RefuseCodes] has an entry, zero included.
	Refusals map[RefusalKey]uint64
	// HandshakeFailures counts the connections that ended before they
	// attached, by reason; every [HandshakeFailure] has an entry.
	HandshakeFailures map[HandshakeFailure]uint64
	PreauthPerIP      uint64 // connections closed at once: their address held MaxPendingPerIP
	PreauthGlobal     uint64 // pending connections closed to make room: MaxPending were pending
	Enrolled          uint64 // devices enrolled by token
	EnrollFailed      uint64 // devices whose enrollment token was refused (or could not be checked)
	DeviceAttaches    uint64 // device attachments registered
	ClientAttaches    uint64 // client attachments registered
	// DeviceReattaches counts the device attachments that replaced one of
	// the same device, or came less than a minute after it left;
	// ClientReattaches those that replaced one of the same client process.
	// Their rate shows a storm of agents coming back again and again.
	DeviceReattaches, ClientReattaches uint64
}

// counters are a [Server]'s running counts; each is atomic, so that the
// forwarding path adds to them without a lock.
type counters struct {
	forwarded, forwardedBytes, dropped, gone atomic.Uint64
	udpAnswered, udpIgnored, replaced        atomic.Uint64
	clientsRefused, clientsUnused, redirects atomic.Uint64
}

// Stats returns the server's counters.
func (s *Server) Stats() Stats {
	st := Stats{Pending: s.pre.pending()}
	st.Devices, st.Clients = s.routes.count()
	c := &s.stats
	st.Replaced = c.replaced.Load()
	st.ClientsRefused = c.clientsRefused.Load()
	st.ClientsUnused = c.clientsUnused.Load()
	st.PacketsForwarded = c.forwarded.Load()
	st.BytesForwarded = c.forwardedBytes.Load()
	st.PacketsDropped = c.dropped.Load()
	st.PeerGone = c.gone.Load()
	st.Redirects = c.redirects.Load()
	st.UDPAnswered = c.udpAnswered.Load()
	st.UDPIgnored = c.udpIgnored.Load()
	st.UDPForwarded = s.urelay.forwarded.Load()
	st.UDPForwardedBytes = s.urelay.forwardedBytes.Load()
	st.UDPDropped = make(map[UDPDrop]uint64, numUDPDrops)
	for _, d := range UDPDrops {
		st.UDPDropped[d] = s.urelay.dropped[d].Load()
	}
	st.UDPBindings, st.UDPBindingsConfirmed = s.urelay.counts(time.Now().UnixNano())
	s.fillEvents(&st)
	return st
}
