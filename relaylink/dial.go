package relaylink

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/burrow-tunnel/burrow/fleet"
	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/relayproto"
)

// fleetVersions remembers, for this process, the highest version of each
// fleet's map that a relay has shown and the agent accepted, so that no
// relay of the fleet can show an older one after that (a relay removed
// from the map showing the map from before its removal). It lives in
// memory only: a restarted agent accepts any version again, until it has
// seen a newer one.
var fleetVersions fleet.Versions

// attachTimeout bounds one attach attempt: TCP, TLS, upgrade and hellos.
const attachTimeout = 10 * time.Second

// Dial opens a Link to cfg.Relay as the agent cfg describes (Identity,
// Role, Instance, EnrollToken; Dial and QueueLen, or their defaults), and
// sends st right behind its hello. The attempt takes 10 seconds at most.
// The Link lives until it is closed or ctx is done. A relay that refuses
// the agent fails it with an [*AttachRefusedError]; one whose certificate
// fails the check, with an [*UntrustedRelayError] or an
// [*identity.KeyMismatchError].
func Dial(ctx context.Context, cfg Config, st State) (*Link, error) {
	cfg.setDefaults()
	hctx, cancel := context.WithTimeout(ctx, attachTimeout)
	defer cancel()
	relay := cfg.Relay
	host, _, _ := net.SplitHostPort(relay.Addr)

	raw, err := cfg.Dial(hctx, "tcp", relay.Addr)
	if err != nil {
		return nil, fmt.Errorf("dial relay: %w", err)
	}
	protos := []string{"http/1.1"}
	if !relay.ID.IsZero() {
		// Asks a relay with a CA-signed certificate for its identity
		// certificate, the only one a pinning agent accepts.
		protos = append(protos, relayproto.ALPNPinned)
	}
	conn := tls.Client(raw, &tls.Config{
		MinVersion:         tls.VersionTLS13,
		ServerName:         host,
		NextProtos:         protos,
		InsecureSkipVerify: true, // checked by verifyRelay, pin or chain
		VerifyConnection:   verifyRelay(relay, host),
	})
	ok := false
	defer func() {
		if !ok {
			conn.Close()
		}
	}()
	stop := context.AfterFunc(hctx, func() { raw.SetDeadline(time.Now()) })
	defer stop()
	if err := conn.HandshakeContext(hctx); err != nil {
		return nil, fmt.Errorf("relay TLS handshake: %w", err)
	}
	cs := conn.ConnectionState()
	exporter, err := cs.ExportKeyingMaterial(relayproto.ExporterLabel, nil, relayproto.ExporterLen)
	if err != nil {
		return nil, fmt.Errorf("relay TLS exporter: %w", err)
	}
	if _, err := conn.Write(upgradeRequest(cfg, st, exporter)); err != nil {
		return nil, fmt.Errorf("relay upgrade: %w", err)
	}
	br := bufio.NewReaderSize(conn, 4096)
	sh, err := readServerHello(br, relay, exporter)
	if err != nil {
		return nil, err
	}
	relayID := identity.IDOf(sh.PublicKey)
	// A pinned ID (the relay's, or its fleet's) was checked in the TLS
	// handshake already; the hello, signed by the identity key, must name
	// the key that passed.
	var fleetMap *fleet.Map
	if !relay.ID.IsZero() {
		if certID, err := identity.PeerID(cs); err != nil || relayID != certID {
			return nil, &identity.KeyMismatchError{Peer: "relay", Expected: certID, Got: relayID}
		}
		if relayID != relay.ID {
			// Pinned by its fleet's ID: the map passed in the handshake
			// (its version was recorded there; it is not checked again).
			m, err := fleet.VerifyCertificate(cs.PeerCertificates[0], relay.ID, relay.Addr, nil)
			if err != nil {
				return nil, fmt.Errorf("relay TLS handshake: %w", err)
			}
			fleetMap = &m
		}
	}
	if sh.Version < relayproto.MinVersion || sh.Version > relayproto.MaxVersion {
		return nil, fmt.Errorf("relay chose protocol version %d, outside %d-%d", sh.Version, relayproto.MinVersion, relayproto.MaxVersion)
	}
	ok = true
	l := newLink(ctx, cfg, conn, br, relayID, sh)
	l.fleetMap = fleetMap
	return l, nil
}

// upgradeRequest returns the upgrade and the hello, to be sent together:
// the hello is bound to this TLS connection (exporter), so it needs no
// answer first. Right behind the hello goes what the relay must know
// before anything else: st.
func upgradeRequest(cfg Config, st State, exporter []byte) []byte {
	req := fmt.Sprintf("GET %s HTTP/1.1\r\nHost: %s\r\nConnection: Upgrade\r\nUpgrade: %s\r\nUser-Agent: burrow\r\n\r\n",
		relayproto.UpgradePath, cfg.Relay.Addr, relayproto.UpgradeToken)
	ch := relayproto.ClientHello{
		MinVersion: relayproto.MinVersion,
		MaxVersion: relayproto.MaxVersion,
		Role:       cfg.Role,
		Instance:   cfg.Instance,
		PublicKey:  cfg.Identity.PublicKey(),
	}
	if cfg.EnrollToken != "" && cfg.Role == relayproto.RoleDevice {
		ch.Extensions = append(ch.Extensions, relayproto.Extension{Type: relayproto.ExtEnrollToken, Value: []byte(cfg.EnrollToken)})
	}
	hello := relayproto.AppendClientHello(nil, ch, exporter, cfg.Identity.Sign)
	msg := append([]byte(req), relayproto.AppendHeader(nil, relayproto.FrameClientHello, len(hello))...)
	msg = append(msg, hello...)
	for _, f := range st.frames(cfg.Role) {
		msg = append(msg, f...)
	}
	return msg
}

// readServerHello reads the upgrade's answer and the relay's hello, or
// its refusal.
func readServerHello(br *bufio.Reader, relay RelayConfig, exporter []byte) (relayproto.ServerHello, error) {
	var none relayproto.ServerHello
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return none, fmt.Errorf("relay upgrade: %w", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusSwitchingProtocols {
		return none, fmt.Errorf("relay upgrade: %s answered %q, not 101 Switching Protocols: is it a burrow relay?", relay.Addr, resp.Status)
	}
	t, n, err := relayproto.ReadHeader(br)
	if err != nil {
		return none, fmt.Errorf("relay hello: %w", err)
	}
	p := make([]byte, n)
	if _, err := io.ReadFull(br, p); err != nil {
		return none, fmt.Errorf("relay hello: %w", err)
	}
	switch t {
	case relayproto.FrameRefuse:
		f, err := relayproto.ParseRefuse(p)
		if err != nil {
			return none, fmt.Errorf("relay refuse: %w", err)
		}
		return none, &AttachRefusedError{Relay: relay.Addr, Refuse: f}
	case relayproto.FrameServerHello:
	default:
		return none, fmt.Errorf("relay hello: got %s frame", t)
	}
	sh, err := relayproto.ParseServerHello(p, exporter)
	if err != nil {
		return none, fmt.Errorf("relay hello: %w", err)
	}
	return sh, nil
}

// verifyRelay checks the relay's certificate inside the TLS handshake, so
// that nothing of the agent's (its hello, access list, enrollment token,
// pairing intents) reaches a relay that fails the check. With a pinned ID,
// the leaf's key must have that ID and nothing else counts: a certificate
// that chains to a trusted root but holds another key is refused (a relay
// with a CA-signed certificate serves pinning agents its identity
// certificate; they ask with [relayproto.ALPNPinned]). The pinned ID may
// also be a fleet's: then the certificate must carry that fleet's signed
// map, listing the leaf's key, and no older than a map of the fleet this
// process has accepted before ([fleet.VerifyRelay], with fleetVersions).
// Without a pin, the certificate must chain to a trusted root for host.
func verifyRelay(relay RelayConfig, host string) func(tls.ConnectionState) error {
	if !relay.ID.IsZero() {
		return fleet.VerifyRelay(relay.ID, relay.Addr, &fleetVersions)
	}
	return func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return &UntrustedRelayError{Relay: relay.Addr, Err: errors.New("no certificate")}
		}
		inter := x509.NewCertPool()
		for _, c := range cs.PeerCertificates[1:] {
			inter.AddCert(c)
		}
		_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{
			DNSName:       host,
			Roots:         relay.RootCAs,
			Intermediates: inter,
		})
		if err != nil {
			return &UntrustedRelayError{Relay: relay.Addr, Err: err}
		}
		return nil
	}
}
