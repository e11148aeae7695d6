package main

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/burrow-tunnel/burrow/fleet"
	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/internal/testing/natstest"
	"github.com/burrow-tunnel/burrow/relay"
	"github.com/burrow-tunnel/burrow/relaylink"
	"github.com/burrow-tunnel/burrow/relayproto"
)

// mustRun runs burrow and fails the test if it fails.
func mustRun(t *testing.T, args ...string) string {
	t.Helper()
	out, stderr, err := run(t, args...)
	if err != nil {
		t.Fatalf("burrow %s: %v\n%s", strings.Join(args, " "), err, stderr)
	}
	return out
}

// runFails runs burrow and requires it to fail with stderr saying says.
func runFails(t *testing.T, says string, args ...string) {
	t.Helper()
	_, stderr, err := run(t, args...)
	if err == nil || !strings.Contains(stderr, says) {
		t.Errorf("burrow %s: %v, stderr %q; want a failure that says %q", strings.Join(args, " "), err, stderr, says)
	}
}

func newID(t *testing.T) identity.ID {
	t.Helper()
	id, err := identity.Generate()
	if err != nil {
		t.Fatal(err)
	}
	return id.ID()
}

// TestBinaryFleet: "burrow fleet init" creates the key (mode 0600) and
// prints the fleet ID, and refuses to replace it; add, list and remove
// change and show the map in NATS, each change a new version signed by
// the key; mistakes are refused with what to do.
func TestBinaryFleet(t *testing.T) {
	ns := natstest.Start(t)
	dir := t.TempDir()
	key := filepath.Join(dir, "fleet.key")
	fleetID, err := identity.ParseID(mustRun(t, "fleet", "init", "--key", key))
	if err != nil {
		t.Fatalf("fleet init printed no fleet ID: %v", err)
	}
	if fi, err := os.Stat(key); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("the key file: %v, %v", fi, err)
	}
	runFails(t, "exists already", "fleet", "init", "--key", key)
	runFails(t, "no fleet map in NATS yet", "fleet", "list", "--nats", ns.URL())

	a, b := newID(t), newID(t)
	out := mustRun(t, "fleet", "add", "--key", key, "--nats", ns.URL(), "--relay-id", a.String(), "--addr", "relay-a.example.com:443", "--region", "eu")
	if !strings.Contains(out, "map version 1, 1 relays") {
		t.Errorf("fleet add printed %q", out)
	}
	mustRun(t, "fleet", "add", "--key", key, "--nats", ns.URL(), "--relay-id", b.String(), "--addr", "relay-b.example.com:443", "--region", "us")
	out = mustRun(t, "fleet", "list", "--nats", ns.URL())
	for _, want := range []string{"fleet " + fleetID.String(), "map version 2, 2 relays", a.String(), "relay-a.example.com:443", "eu", b.String(), "relay-b.example.com:443"} {
		if !strings.Contains(out, want) {
			t.Errorf("fleet list does not show %q:\n%s", want, out)
		}
	}
	out = mustRun(t, "fleet", "remove", "--key", key, "--nats", ns.URL(), "--relay-id", a.String())
	if !strings.Contains(out, "map version 3, 1 relays") || strings.Contains(out, a.String()) {
		t.Errorf("fleet remove printed %q", out)
	}
	out = mustRun(t, "fleet", "list", "--nats", ns.URL())
	if strings.Contains(out, a.String()) || !strings.Contains(out, b.String()) {
		t.Errorf("fleet list after remove:\n%s", out)
	}

	runFails(t, "not in the fleet map", "fleet", "remove", "--key", key, "--nats", ns.URL(), "--relay-id", a.String())
	runFails(t, "want the relay's host:port", "fleet", "add", "--key", key, "--nats", ns.URL(), "--relay-id", a.String(), "--addr", "relay-a.example.com")
	runFails(t, "--relay-id is required", "fleet", "add", "--key", key, "--nats", ns.URL(), "--addr", "a:1")
	runFails(t, "--nats is required", "fleet", "list")
	runFails(t, "--key is required", "fleet", "remove", "--nats", ns.URL(), "--relay-id", b.String())
	other := filepath.Join(dir, "other.key")
	mustRun(t, "fleet", "init", "--key", other)
	runFails(t, "use that fleet's key", "fleet", "add", "--key", other, "--nats", ns.URL(), "--relay-id", a.String(), "--addr", "a:1")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	nowhere := "nats://" + ln.Addr().String()
	ln.Close()
	runFails(t, "connect to NATS at "+nowhere, "fleet", "list", "--nats", nowhere)
}

// TestFleetMapSource: a relay that joins the fleet gets the map from NATS
// (fleetMapSource, what "burrow relay --nats" gives relay.Config.FleetMap)
// and follows it while it runs: agents pinning the fleet ID attach to it
// until "burrow fleet remove" takes it out of the map, and are refused
// after. A relay not in the map cannot join.
func TestFleetMapSource(t *testing.T) {
	ns := natstest.Start(t)
	nc, err := nats.Connect(ns.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	rid, _ := identity.Generate()

	if _, err := fleetMapSource(ctx, nc, rid.ID()); err == nil || !strings.Contains(err.Error(), "no fleet map in NATS") {
		t.Fatalf("fleetMapSource with no map: %v", err)
	}
	key := filepath.Join(t.TempDir(), "fleet.key")
	fleetID, err := identity.ParseID(mustRun(t, "fleet", "init", "--key", key))
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	addr := ln.Addr().String()
	mustRun(t, "fleet", "add", "--key", key, "--nats", ns.URL(), "--relay-id", newID(t).String(), "--addr", "other.example.com:443")
	if _, err := fleetMapSource(ctx, nc, rid.ID()); err == nil || !strings.Contains(err.Error(), "is not in the map") || !strings.Contains(err.Error(), "burrow fleet add") {
		t.Fatalf("fleetMapSource for a relay not in the map: %v", err)
	}
	mustRun(t, "fleet", "add", "--key", key, "--nats", ns.URL(), "--relay-id", rid.ID().String(), "--addr", addr)
	src, err := fleetMapSource(ctx, nc, rid.ID())
	if err != nil {
		t.Fatal(err)
	}
	srv, err := relay.New(relay.Config{Identity: rid, FleetMap: src, AllowDevice: func(identity.ID) bool { return true }})
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	defer srv.Close()

	attach := func() error {
		dev, _ := identity.Generate()
		dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		l, err := relaylink.Dial(dctx, relaylink.Config{Relay: relaylink.RelayConfig{Addr: addr, ID: fleetID}, Identity: dev, Role: relayproto.RoleDevice}, relaylink.State{})
		if err == nil {
			l.Close()
		}
		return err
	}
	if err := attach(); err != nil {
		t.Fatalf("attach pinning the fleet: %v", err)
	}
	mustRun(t, "fleet", "remove", "--key", key, "--nats", ns.URL(), "--relay-id", rid.ID().String())
	deadline := time.Now().Add(5 * time.Second)
	for {
		m, err := fleet.ParseMap(src())
		if err != nil {
			t.Fatal(err)
		}
		if m.Version == 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the relay still has map version %d, 5s after the removal", m.Version)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := attach(); !errors.Is(err, fleet.ErrRefused) {
		t.Fatalf("attach after the relay's removal: %v, want a refusal by the fleet map", err)
	}
}
