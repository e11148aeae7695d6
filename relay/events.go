package relay

import (
	"errors"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/relayproto"
)

// This file counts what happens to agents as they attach: refusals,
// handshake failures, enrollments, attaches and reattaches, and keeps the
// last refusals for an operator to read. None of it runs per packet.

// A Refusal is one agent the relay refused (sent a refuse frame), as
// [Server.RecentRefusals] lists it.
type Refusal struct {
	Time   time.Time
	Remote string          // the agent's address as the relay saw it ("host:port")
	Role   relayproto.Role // zero if it was refused before its hello was read
	Agent  identity.ID     // zero if it was refused before its hello was read
	Code   relayproto.RefuseCode
	Reason string // the message the agent was told: why, and what to do
}

// MaxRecentRefusals is how many refusals [Server.RecentRefusals] keeps.
const MaxRecentRefusals = 50

// RecentRefusals returns the last refusals, newest first, at most
// [MaxRecentRefusals] of them. The slice is the caller's.
func (s *Server) RecentRefusals() []Refusal {
	r := &s.refused
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]Refusal, 0, len(r.ring))
	for i := range len(r.ring) {
		out = append(out, r.ring[(r.next-1-i+2*len(r.ring))%len(r.ring)])
	}
	return out
}

// refusalLog is a ring of the last refusals.
type refusalLog struct {
	mu   sync.Mutex
	ring []Refusal // guarded by mu; grows to MaxRecentRefusals, then wraps
	next int       // where the next one goes; guarded by mu
}

func (l *refusalLog) add(r Refusal) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.ring) < MaxRecentRefusals {
		l.ring = append(l.ring, r)
		l.next = len(l.ring) % MaxRecentRefusals
		return
	}
	l.ring[l.next] = r
	l.next = (l.next + 1) % MaxRecentRefusals
}

// A HandshakeFailure is why an agent's connection ended before it
// attached, for reasons of protocol or transport rather than of the
// relay's policy (which refuses: see [Stats.Refusals]).
type HandshakeFailure uint8

// Handshake failures. A refusal for version, authentication or role is
// also counted as one of these; one for policy (not allowed, overloaded,
// too many, shutting down) is not.
const (
	// HandshakeTLS: the TLS handshake failed, or the connection closed
	// before its upgrade request (only for [Server.Serve]'s listener).
	HandshakeTLS HandshakeFailure = iota
	// HandshakeTimeout: the handshake did not finish in
	// [Config.HandshakeTimeout].
	HandshakeTimeout
	// HandshakeBadHello: the hello, or a device's access list behind it,
	// was not a well-formed frame of its kind.
	HandshakeBadHello
	// HandshakeBadAuth: the hello did not prove the agent's key, or the
	// connection had no TLS 1.3 to bind it to.
	HandshakeBadAuth
	// HandshakeVersion: agent and relay share no protocol version.
	HandshakeVersion
	// HandshakeBadRole: the hello named an unknown role.
	HandshakeBadRole
	// HandshakeIO: the connection failed or closed mid-handshake.
	HandshakeIO

	numHandshakeFailures
)

// HandshakeFailures lists every [HandshakeFailure].
var HandshakeFailures = []HandshakeFailure{HandshakeTLS, HandshakeTimeout, HandshakeBadHello, HandshakeBadAuth,
	HandshakeVersion, HandshakeBadRole, HandshakeIO}

// String is the failure's name, a Prometheus-style label value.
func (f HandshakeFailure) String() string {
	switch f {
	case HandshakeTLS:
		return "tls"
	case HandshakeTimeout:
		return "timeout"
	case HandshakeBadHello:
		return "bad_hello"
	case HandshakeBadAuth:
		return "bad_auth"
	case HandshakeVersion:
		return "version"
	case HandshakeBadRole:
		return "bad_role"
	case HandshakeIO:
		return "io"
	}
	return "unknown"
}

// RefuseCodes lists the codes the relay refuses agents with.
var RefuseCodes = []relayproto.RefuseCode{relayproto.RefuseVersion, relayproto.RefuseAuth, relayproto.RefuseNotAllowed,
	relayproto.RefuseBadRole, relayproto.RefuseOverloaded, relayproto.RefuseShuttingDown, relayproto.RefuseTooMany}

// A RefusalKey is what [Stats.Refusals] counts refusals under. Role is
// zero for an agent refused before its hello was read.
type RefusalKey struct {
	Role relayproto.Role
	Code relayproto.RefuseCode
}

// Roles of the counters: an unknown role, a device, a client.
const numRoles = 3

func roleIndex(r relayproto.Role) int {
	switch r {
	case relayproto.RoleDevice:
		return 1
	case relayproto.RoleClient:
		return 2
	}
	return 0
}

var indexRole = [numRoles]relayproto.Role{0, relayproto.RoleDevice, relayproto.RoleClient}

// numCodes bounds the refuse codes counted; the relay sends none above.
const numCodes = 8

// events are the counters of this file; each is atomic.
type events struct {
	refusals     [numRoles][numCodes]atomic.Uint64
	handshake    [numHandshakeFailures]atomic.Uint64
	enrolled     atomic.Uint64
	enrollFailed atomic.Uint64
	attaches     [numRoles]atomic.Uint64
	reattaches   [numRoles]atomic.Uint64
}

// reattachWindow is how soon after it left a device that attaches again
// counts as reattaching.
const reattachWindow = time.Minute

// A handshakeAgent is what the handshake learned of the agent so far.
type handshakeAgent struct {
	role relayproto.Role
	id   identity.ID
}

// noteRefusal counts the refusal r of the agent at remote and keeps it in
// the recent refusals.
func (s *Server) noteRefusal(remote net.Addr, who handshakeAgent, r *refusal) {
	s.events.refusals[roleIndex(who.role)][min(int(r.code), numCodes-1)].Add(1)
	rf := Refusal{Time: time.Now(), Role: who.role, Agent: who.id, Code: r.code, Reason: r.msg}
	if remote != nil {
		rf.Remote = remote.String()
	}
	s.refused.add(rf)
}

// noteHandshakeFailure counts the handshake that ended with err, if it
// failed for a reason of protocol or transport. timedOut says the preauth
// bound closed its connection.
func (s *Server) noteHandshakeFailure(err error, timedOut bool) {
	f, ok := handshakeFailureOf(err, timedOut)
	if ok {
		s.events.handshake[f].Add(1)
	}
}

func handshakeFailureOf(err error, timedOut bool) (HandshakeFailure, bool) {
	if r, ok := errors.AsType[*refusal](err); ok {
		switch {
		case errors.As(err, new(*badHelloError)):
			return HandshakeBadHello, true
		case r.code == relayproto.RefuseAuth:
			return HandshakeBadAuth, true
		case r.code == relayproto.RefuseVersion:
			return HandshakeVersion, true
		case r.code == relayproto.RefuseBadRole:
			return HandshakeBadRole, true
		}
		return 0, false // a verdict of policy
	}
	var ne net.Error
	if timedOut || errors.Is(err, os.ErrDeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout()) {
		return HandshakeTimeout, true
	}
	return HandshakeIO, true
}

// A badHelloError is a refusal for a hello, or a device's access list,
// that was not well formed.
type badHelloError struct{ r *refusal }

func (e *badHelloError) Error() string { return e.r.Error() }
func (e *badHelloError) Unwrap() error { return e.r }

// noteAttach counts the attachment of an agent of role; again says that it
// replaced one of the same agent, or that the device left a moment ago.
func (s *Server) noteAttach(role relayproto.Role, again bool) {
	i := roleIndex(role)
	s.events.attaches[i].Add(1)
	if again {
		s.events.reattaches[i].Add(1)
	}
}

// noteEnrollment counts an enrollment by token that succeeded or not.
func (s *Server) noteEnrollment(ok bool) {
	if ok {
		s.events.enrolled.Add(1)
	} else {
		s.events.enrollFailed.Add(1)
	}
}

// fillEvents copies the counters of this file into st.
func (s *Server) fillEvents(st *Stats) {
	e := &s.events
	st.Refusals = make(map[RefusalKey]uint64, numRoles*len(RefuseCodes))
	for ri, role := range indexRole {
		for _, c := range RefuseCodes {
			st.Refusals[RefusalKey{role, c}] = e.refusals[ri][c].Load()
		}
	}
	st.HandshakeFailures = make(map[HandshakeFailure]uint64, numHandshakeFailures)
	for _, f := range HandshakeFailures {
		st.HandshakeFailures[f] = e.handshake[f].Load()
	}
	st.PreauthPerIP = s.pre.perIPRejected.Load()
	st.PreauthGlobal = s.pre.evicted.Load()
	st.HandshakeFailures[HandshakeTLS] += s.pre.tlsFailed.Load()
	st.HandshakeFailures[HandshakeTimeout] += s.pre.timedOut.Load()
	st.Enrolled = e.enrolled.Load()
	st.EnrollFailed = e.enrollFailed.Load()
	st.DeviceAttaches = e.attaches[1].Load()
	st.ClientAttaches = e.attaches[2].Load()
	st.DeviceReattaches = e.reattaches[1].Load()
	st.ClientReattaches = e.reattaches[2].Load()
}

// helloError is the refusal of a hello that did not parse: a bad
// signature does not prove the key, anything else is a bad hello.
func helloError(err error) error {
	r := &refusal{relayproto.RefuseAuth, err.Error()}
	if errors.Is(err, relayproto.ErrBadSignature) {
		return r
	}
	return &badHelloError{r}
}
