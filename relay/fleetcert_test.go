package relay

import (
	"crypto/tls"
	"log/slog"
	"net"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/burrow-tunnel/burrow/fleet"
	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/relayproto"
)

func fleetMap(t *testing.T, key *identity.Identity, version uint64, relays ...identity.ID) []byte {
	t.Helper()
	m := fleet.Map{Version: version}
	for _, id := range relays {
		m = m.With(fleet.Relay{ID: id, Addr: "127.0.0.1:443"})
	}
	b, err := fleet.AppendMap(nil, m, key)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// servedMap returns the fleet map in the certificate srv serves an agent
// offering protos (nil if none).
func servedMap(t *testing.T, srv *Server, protos ...string) []byte {
	t.Helper()
	// Over TCP rather than a pipe, so that closing does not wait for the
	// peer to read the close alert.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		b, err := ln.Accept()
		if err != nil {
			return
		}
		s := tls.Server(b, srv.TLSConfig())
		s.Handshake()
		s.Close()
	}()
	a, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c := tls.Client(a, &tls.Config{MinVersion: tls.VersionTLS13, InsecureSkipVerify: true, NextProtos: protos})
	defer c.Close()
	if err := c.Handshake(); err != nil {
		t.Fatal(err)
	}
	leaf := c.ConnectionState().PeerCertificates[0]
	for _, e := range leaf.Extensions {
		if e.Id.Equal(fleet.ExtensionOID) {
			if e.Critical {
				t.Error("the fleet map extension is critical")
			}
			return e.Value
		}
	}
	return nil
}

// TestFleetCertificate: a fleet relay carries its current map in its
// identity certificate, made again when the map changes; it ignores a map
// that is older, of another fleet or broken, and keeps the last good one.
// A relay that the map does not list refuses to start.
func TestFleetCertificate(t *testing.T) {
	id, _ := identity.Generate()
	key, _ := identity.Generate()
	other, _ := identity.Generate()
	var cur atomic.Pointer[[]byte]
	show := func(b []byte) { cur.Store(&b) }

	show(fleetMap(t, key, 1, identity.ID{1}))
	_, err := New(Config{Identity: id, FleetMap: func() []byte { return *cur.Load() }})
	if err == nil || !strings.Contains(err.Error(), "not in the map") || !strings.Contains(err.Error(), id.ID().String()) {
		t.Fatalf("New with a map that does not list the relay: %v", err)
	}

	v1 := fleetMap(t, key, 1, id.ID())
	show(v1)
	srv, err := New(Config{Identity: id, FleetMap: func() []byte { return *cur.Load() }, Logger: slog.New(slog.NewTextHandler(t.Output(), nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	for _, protos := range [][]string{{"http/1.1", relayproto.ALPNPinned}, {"http/1.1"}} {
		if got := servedMap(t, srv, protos...); string(got) != string(v1) {
			t.Fatalf("offering %v: served map of %d bytes, want version 1", protos, len(got))
		}
	}
	v3 := fleetMap(t, key, 3, id.ID(), identity.ID{2})
	show(v3)
	if string(servedMap(t, srv, "http/1.1", relayproto.ALPNPinned)) != string(v3) {
		t.Fatal("the new map is not served")
	}
	for _, bad := range [][]byte{fleetMap(t, key, 2, id.ID()), fleetMap(t, other, 4, id.ID()), v3[1:]} {
		show(bad)
		if string(servedMap(t, srv, "http/1.1", relayproto.ALPNPinned)) != string(v3) {
			t.Fatal("a bad map replaced the served one")
		}
	}
}
