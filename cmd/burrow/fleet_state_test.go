package main

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/burrow-tunnel/burrow/internal/testing/natstest"
	"github.com/burrow-tunnel/burrow/internal/testing/tunneltest"
)

// TestBinaryRelayFleetState: two relay processes share their devices and
// tokens in NATS (--nats): a token made through relay A's data directory
// enrolls a device at relay B, A lists it, and removing it through A
// sends it away from B. With A stopped, its data directory refuses to
// stand in for the fleet's state.
func TestBinaryRelayFleetState(t *testing.T) {
	ns := natstest.Start(t)
	dir := t.TempDir()
	dataA, dataB := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	relayA := start(t, "relay A", "relay", "--listen", "127.0.0.1:0", "--data", dataA, "--nats", ns.URL(), "--no-udp")
	relayA.waitFor(reRelayListening, 0, 10*time.Second)
	relayB := start(t, "relay B", "relay", "--listen", "127.0.0.1:0", "--data", dataB, "--nats", ns.URL(), "--no-udp")
	m, _ := relayB.waitFor(reRelayListening, 0, 10*time.Second)
	addrB, idB := m[1], m[2]

	tokenOut, stderr, err := run(t, "relay", "token", "create", "--data", dataA)
	if err != nil {
		t.Fatalf("token through A: %v %s", err, stderr)
	}
	cfg := filepath.Join(dir, "device.yaml")
	body := fmt.Sprintf("relay: %s\nrelay_id: %s\nidentity: device.key\nenroll_token: %s\nservices:\n  http: 127.0.0.1:1\nclients:\n  %s: [http]\ndirect: false\n",
		addrB, idB, strings.TrimSpace(tokenOut), tunneltest.NewIdentity(t).ID())
	if err := os.WriteFile(cfg, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	dev := start(t, "device", "device", "--config", cfg)
	_, at := dev.waitFor(reAttached, 0, 10*time.Second)
	devOut, _, _ := run(t, "id", "--identity", filepath.Join(dir, "device.key"))
	devID := strings.TrimSpace(devOut)

	list, stderr, err := run(t, "relay", "devices", "--data", dataA)
	if err != nil || !strings.Contains(list, devID) {
		t.Fatalf("devices through A: %q %q %v", list, stderr, err)
	}
	if out, stderr, err := run(t, "relay", "devices", "remove", devID, "--data", dataA); err != nil {
		t.Fatalf("remove through A: %q %q %v", out, stderr, err)
	}
	dev.waitFor(regexp.MustCompile(`relay attach failed.*is not enrolled on this relay`), at, 15*time.Second)

	relayA.stop()
	_, stderr, err = run(t, "relay", "token", "create", "--data", dataA)
	if err == nil || !strings.Contains(stderr, "keeps its devices and tokens in NATS") {
		t.Fatalf("token through a stopped fleet relay's data directory: %v %q", err, stderr)
	}
	if _, err := os.Stat(filepath.Join(dataA, relayStoreFile)); err == nil {
		t.Fatal("a fleet relay's data directory has a store of its own")
	}
}

// TestBinaryRelayNATSFlags: the NATS options go with --nats, and a relay
// that cannot reach NATS says so and does not start.
func TestBinaryRelayNATSFlags(t *testing.T) {
	dir := t.TempDir()
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"--nats-creds", "x.creds"}, "go with --nats"},
		{[]string{"--nats", "nats://127.0.0.1:1", "--nats-tls-cert", "c.pem"}, "--nats-tls-cert and --nats-tls-key go together"},
		{[]string{"--nats", "nats://127.0.0.1:1", "--nats-replicas", "0"}, "want 1 to 5"},
		{[]string{"--nats", "nats://127.0.0.1:1"}, "connect to NATS at nats://127.0.0.1:1"},
	} {
		args := append([]string{"relay", "--listen", "127.0.0.1:0", "--data", filepath.Join(dir, "r"), "--no-udp"}, tt.args...)
		if _, stderr, err := run(t, args...); err == nil || !strings.Contains(stderr, tt.want) {
			t.Errorf("%v: %v %q, want %q", tt.args, err, stderr, tt.want)
		}
	}
}
