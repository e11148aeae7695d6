package main

import (
	"context"
	"errors"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/burrow-tunnel/burrow/client"
	"github.com/burrow-tunnel/burrow/fleetstate"
	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/internal/testing/natstest"
	"github.com/burrow-tunnel/burrow/internal/testing/tunneltest"
	"github.com/burrow-tunnel/burrow/relaylink"
)

// TestBinaryRelayJoinsFleet: "burrow relay --nats" joins the fleet whose
// map is in NATS. A relay the map does not list refuses to start and says
// how to add it; once added, it starts, and an agent pinning the fleet ID
// (not the relay's) attaches to it. The relay keeps its liveness key in
// the fleet's presence while it runs, and deletes it when it stops.
func TestBinaryRelayJoinsFleet(t *testing.T) {
	ns := natstest.Start(t)
	dir := t.TempDir()
	key := filepath.Join(dir, "fleet.key")
	fleetID, err := identity.ParseID(mustRun(t, "fleet", "init", "--key", key))
	if err != nil {
		t.Fatalf("fleet init: %v", err)
	}
	mustRun(t, "fleet", "add", "--key", key, "--nats", ns.URL(), "--relay-id", newID(t).String(), "--addr", "other.example.com:443")
	data := filepath.Join(dir, "relay")
	args := []string{"relay", "--listen", "127.0.0.1:0", "--data", data, "--nats", ns.URL(), "--no-udp"}
	_, stderr, err := run(t, args...)
	m := regexp.MustCompile(`this relay \(ID (\S+)\) is not in the map`).FindStringSubmatch(stderr)
	if err == nil || m == nil || !strings.Contains(stderr, "burrow fleet add") {
		t.Fatalf("a relay not in the map: err %v, stderr:\n%s", err, stderr)
	}
	mustRun(t, "fleet", "add", "--key", key, "--nats", ns.URL(), "--relay-id", m[1], "--addr", "relay.example.com:443")
	relay := start(t, "relay", args...)
	lm, _ := relay.waitFor(reRelayListening, 0, 10*time.Second)
	if lm[2] != m[1] {
		t.Fatalf("the relay listens as %s, was refused as %s", lm[2], m[1])
	}
	c, err := client.New(client.Config{Identity: tunneltest.NewIdentity(t), Relay: relaylink.RelayConfig{Addr: lm[1], ID: fleetID}, Logger: tunneltest.Logger(t), NoLAN: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if err := c.WaitAttached(ctx); err != nil {
		t.Fatalf("an agent pinning the fleet ID: %v", err)
	}
	if st := c.RelayStatus(); st.RelayID.String() != m[1] {
		t.Fatalf("attached to relay %v, want %s", st.RelayID, m[1])
	}
	nc, err := nats.Connect(ns.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	live, err := js.KeyValue(ctx, fleetstate.RelaysBucket)
	if err != nil {
		t.Fatalf("relays bucket: %v", err)
	}
	if _, err := live.Get(ctx, m[1]); err != nil {
		t.Fatalf("the running relay's liveness key: %v", err)
	}
	relay.stop()
	if _, err := live.Get(ctx, m[1]); !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Fatalf("the stopped relay's liveness key: %v, want it deleted", err)
	}
}
