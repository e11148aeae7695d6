package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/burrow-tunnel/burrow/internal/testing/tunneltest"
)

// readmeNATSConf returns the NATS configuration README's "Running a
// fleet" gives for nats-1.
func readmeNATSConf(t *testing.T) string {
	t.Helper()
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile("(?s)```\n(# /etc/nats/nats.conf on nats-1.*?)```").FindSubmatch(readme)
	if m == nil {
		t.Fatal("README has no NATS configuration for nats-1 under Running a fleet")
	}
	return string(m[1])
}

// TestReadmeNATSCluster runs the three-node NATS cluster of README's
// "Running a fleet" with its configuration as written (on loopback:
// addresses, routes and store directories replaced), the password from
// the environment, and two relays on it with three replicas: a token made
// through one relay enrolls a device at the other, and with one NATS node
// killed the fleet goes on (a new token, a new device).
func TestReadmeNATSCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("skipped with -short: it runs three nats-server processes")
	}
	conf := readmeNATSConf(t)
	for _, want := range []string{"server_name: nats-1", "0.0.0.0:4222", "0.0.0.0:6222", "store_dir: /var/lib/nats",
		"nats-route://nats-2.internal:6222", "nats-route://nats-3.internal:6222", "$RELAY_PASSWORD"} {
		if !strings.Contains(conf, want) {
			t.Fatalf("README's NATS configuration has no %q:\n%s", want, conf)
		}
	}
	dir := t.TempDir()
	const password = "s3cret-for-this-test"
	var clients, routes [3]string
	for i := range 3 {
		clients[i], routes[i] = freeAddr(t), freeAddr(t)
	}
	nodes := make([]*proc, 3)
	var relays []*proc
	for i := range 3 {
		c := strings.NewReplacer(
			"server_name: nats-1", fmt.Sprintf("server_name: nats-%d", i+1),
			"0.0.0.0:4222", clients[i],
			"0.0.0.0:6222", routes[i],
			"store_dir: /var/lib/nats", "store_dir: "+filepath.Join(dir, fmt.Sprintf("nats-%d", i+1)),
			"nats-route://nats-2.internal:6222", "nats-route://"+routes[(i+1)%3],
			"nats-route://nats-3.internal:6222", "nats-route://"+routes[(i+2)%3],
		).Replace(conf)
		file := filepath.Join(dir, fmt.Sprintf("nats-%d.conf", i+1))
		if err := os.WriteFile(file, []byte(c), 0o600); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(natsServerBinary(t), "-c", file)
		cmd.Env = append(os.Environ(), "RELAY_PASSWORD="+password)
		nodes[i] = startCmd(t, fmt.Sprintf("nats-%d", i+1), cmd)
	}
	for _, n := range nodes {
		n.waitFor(reNATSReady, 0, 20*time.Second)
	}
	var urls []string
	for _, c := range clients {
		urls = append(urls, "nats://relay:"+password+"@"+c)
	}
	natsURL := strings.Join(urls, ",")

	key := filepath.Join(dir, "fleet.key")
	fleetID := strings.TrimSpace(mustRun(t, "fleet", "init", "--key", key))
	var data, addrs [2]string
	for i := range 2 {
		data[i], addrs[i] = filepath.Join(dir, fmt.Sprintf("relay%d", i)), freeAddr(t)
		id := strings.TrimSpace(mustRun(t, "relay", "id", "--data", data[i]))
		// The map's first write waits for the cluster's JetStream to have
		// a leader.
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(500 * time.Millisecond) {
			_, stderr, err := run(t, "fleet", "add", "--key", key, "--nats", natsURL, "--relay-id", id, "--addr", addrs[i], "--region", "eu")
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("fleet add on the README's cluster: %v\n%s", err, stderr)
			}
		}
	}
	for i := range 2 {
		r := start(t, fmt.Sprintf("relay%d", i), "relay", "--listen", addrs[i], "--data", data[i], "--nats", natsURL, "--nats-replicas", "3", "--no-udp")
		r.waitFor(reRelayListening, 0, 30*time.Second)
		relays = append(relays, r)
	}
	echo := tunneltest.StartServer(t, tunneltest.Echo)
	clientID := strings.TrimSpace(mustRun(t, "id", "--identity", filepath.Join(dir, "client.key")))
	device := func(name string, relay int, token string) *proc {
		cfg := filepath.Join(dir, name+".yaml")
		body := fmt.Sprintf("relay: %s\nrelay_id: %s\nidentity: %s.key\nstate: %s-state\nenroll_token: %s\nservices:\n  echo: %s\nclients:\n  %s: [echo]\ndirect: false\n",
			addrs[relay], fleetID, name, name, token, echo.Addr, clientID)
		if err := os.WriteFile(cfg, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		d := start(t, name, "device", "--config", cfg)
		d.waitFor(reAttached, 0, 20*time.Second)
		return d
	}
	device("cam1", 1, strings.TrimSpace(mustRun(t, "relay", "token", "create", "--data", data[0])))

	// One node down: two of three replicas remain, and the fleet goes on.
	nodes[2].kill()
	var token string
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(500 * time.Millisecond) {
		out, stderr, err := run(t, "relay", "token", "create", "--data", data[1])
		if err == nil {
			token = strings.TrimSpace(out)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("token with a NATS node down: %v\n%s", err, stderr)
		}
	}
	device("cam2", 0, token)
	// Relay 0 lists what it holds in memory; it learns of cam1, which
	// relay 1 enrolled, from its watch of the fleet's records, a moment
	// after the write (longer with a NATS node just killed).
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		out := mustRun(t, "relay", "devices", "--data", data[0])
		if strings.Count(out, "\n") >= 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("relay devices 10s after cam1 and cam2 enrolled:\n%s", out)
		}
	}
	// The password in --nats shows nowhere the relay writes.
	for i, r := range relays {
		r.mu.Lock()
		out := strings.Join(r.lines, "\n")
		r.mu.Unlock()
		mark, _ := os.ReadFile(filepath.Join(data[i], "nats-state"))
		if strings.Contains(out, password) || strings.Contains(string(mark), password) {
			t.Fatalf("relay %d wrote the NATS password in its log or data directory", i)
		}
	}
}

func TestRedactURLs(t *testing.T) {
	for in, want := range map[string]string{
		"nats://127.0.0.1:4222":                           "nats://127.0.0.1:4222",
		"nats://relay:pw@n1:4222,nats://relay:pw@n2:4222": "nats://relay:xxxxx@n1:4222,nats://relay:xxxxx@n2:4222",
		"nats://s3cret-token@n1:4222":                     "nats://xxxxx@n1:4222",
		"nats://n1:4222, tls://relay:pw@n2:4222":          "nats://n1:4222,tls://relay:xxxxx@n2:4222",
	} {
		if got := redactURLs(in); got != want {
			t.Errorf("redactURLs(%q) = %q, want %q", in, got, want)
		}
	}
}
