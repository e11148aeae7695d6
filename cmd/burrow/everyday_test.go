package main

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// runFor runs burrow with args for at most d and returns its outputs; a
// command still running then is killed (err says so).
func runFor(t *testing.T, d time.Duration, args ...string) (string, string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary(t), offLAN(args)...)
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	return stdout.String(), stderr.String(), err
}

// pairedHome pairs a new client home with a device whose viewer role
// grants http only, and returns the home.
func pairedHome(t *testing.T) string {
	t.Helper()
	invite := pairingDevice(t)
	home := filepath.Join(t.TempDir(), "home")
	if _, out, stderr, err := runPair(t, invite()+"\n", "--name", "cam1", "--home", home); err != nil || !strings.Contains(out, "paired with cam1") {
		t.Fatalf("pair: %q %q %v", out, stderr, err)
	}
	return home
}

// TestBinaryConnectChecksPairing: connect refuses at once, with a hint, a
// service the pairing does not grant, instead of listening and then
// resetting every connection; a bare --listen port is loopback.
func TestBinaryConnectChecksPairing(t *testing.T) {
	home := pairedHome(t)
	for _, tc := range []struct {
		service string
		want    []string
	}{
		{"rtsp", []string{`service "rtsp" is not granted`, "role viewer", "grants http"}},
		{"htpp", []string{`unknown service "htpp"`, `did you mean "http"?`, ": http"}},
	} {
		_, stderr, err := runFor(t, 10*time.Second, "connect", "cam1", tc.service, "--home", home, "--no-direct")
		if err == nil || !strings.Contains(stderr, "burrow: ") {
			t.Errorf("connect cam1 %s: %q %v, want it to fail at once", tc.service, stderr, err)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(stderr, w) {
				t.Errorf("connect cam1 %s: %q, want it to say %q", tc.service, stderr, w)
			}
		}
	}

	// A bare port listens on loopback only.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
	ln.Close()
	conn := start(t, "connect", "connect", "cam1", "http", "--listen", port, "--home", home, "--no-direct")
	conn.waitFor(regexp.MustCompile(`^listening on 127\.0\.0\.1:`+port+`$`), 0, 10*time.Second)
	if body, err := get(t, "127.0.0.1:"+port); err != nil || body != "camera admin page" {
		t.Fatalf("through the tunnel: %q, %v", body, err)
	}
}

// TestBinaryPingPairOutput: ping and pair print their results on stdout
// and nothing else; by default their stderr holds no info log lines
// (--log-level brings them back).
func TestBinaryPingPairOutput(t *testing.T) {
	invite := pairingDevice(t)
	home := filepath.Join(t.TempDir(), "home")
	_, out, stderr, err := runPair(t, invite()+"\n", "--name", "cam1", "--home", home)
	if err != nil || !regexp.MustCompile(`^paired with cam1 as \S+ \(role viewer; services: http\)\ntry: burrow connect cam1 http\n$`).MatchString(out) {
		t.Fatalf("pair: stdout %q, stderr %q, %v", out, stderr, err)
	}
	if stderr != "" {
		t.Errorf("pair: stderr %q, want nothing", stderr)
	}

	out, stderr, err = run(t, "ping", "cam1", "--home", home, "--no-direct", "--no-relay-udp", "--count", "2", "--interval", "100ms")
	re := regexp.MustCompile(`^PING cam1 \(\S+\) via relay \S+\n(seq=\d rtt=\d+\.\d{3}ms path=relay\n){2}--- cam1: 2 sent, 2 answered, rtt min/avg/max \S+/\S+/\S+\n$`)
	if err != nil || !re.MatchString(out) {
		t.Fatalf("ping: stdout %q, stderr %q, %v", out, stderr, err)
	}
	if stderr != "" {
		t.Errorf("ping: stderr %q, want nothing", stderr)
	}
	_, stderr, err = run(t, "ping", "cam1", "--home", home, "--no-direct", "--count", "1", "--log-level", "info")
	if err != nil || !strings.Contains(stderr, "level=INFO") {
		t.Errorf("ping --log-level info: stderr %q, %v: want its info lines", stderr, err)
	}
}

// TestBinaryPingRelayDown: a ping through a relay that is down, or that
// proves another key, says so, not only that the time ran out.
func TestBinaryPingRelayDown(t *testing.T) {
	dir := t.TempDir()
	idOut, _, err := run(t, "id", "--identity", filepath.Join(dir, "x.key"))
	if err != nil {
		t.Fatal(err)
	}
	id := strings.TrimSpace(idOut)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	down := ln.Addr().String()
	ln.Close()
	_, stderr, err := runFor(t, 20*time.Second, "ping", id, "--relay", down, "--relay-id", id,
		"--home", filepath.Join(dir, "home"), "--count", "1", "--timeout", "2s")
	if err == nil || !strings.Contains(stderr, "not attached to relay "+down) || !strings.Contains(stderr, "connection refused") ||
		strings.Contains(stderr, "deadline exceeded") {
		t.Fatalf("ping with the relay down: %q %v, want the refused connection", stderr, err)
	}

	// A relay that proves another key than the one pinned.
	relayData := filepath.Join(dir, "relay")
	relay := start(t, "relay", "relay", "--listen", "127.0.0.1:0", "--data", relayData, "--open", "--no-udp")
	m, _ := relay.waitFor(reRelayListening, 0, 10*time.Second)
	_, stderr, err = runFor(t, 20*time.Second, "ping", id, "--relay", m[1], "--relay-id", id,
		"--home", filepath.Join(dir, "home"), "--count", "1", "--timeout", "5s")
	if err == nil || !strings.Contains(stderr, "burrow: no answer from "+id+": relay TLS handshake: key mismatch") {
		t.Fatalf("ping through an untrusted relay: %q %v, want the key mismatch", stderr, err)
	}
}

// TestBinaryAdminOtherUser: an admin command run by a user who may not
// open the relay's admin socket says who may, not only "permission
// denied". It runs the command as nobody (uid 65534), so it needs root.
func TestBinaryAdminOtherUser(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("runs a command as another user: needs root")
	}
	bin := binary(t)
	// The other user must reach the binary and the relay's data
	// directory (not its contents).
	if err := os.Chmod(filepath.Dir(bin), 0o755); err != nil {
		t.Fatal(err)
	}
	base, err := os.MkdirTemp("", "burrow-admin-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	if err := os.Chmod(base, 0o755); err != nil {
		t.Fatal(err)
	}
	relayData := filepath.Join(base, "relay")
	relay := start(t, "relay", "relay", "--listen", "127.0.0.1:0", "--data", relayData, "--open", "--no-udp")
	relay.waitFor(reRelayListening, 0, 10*time.Second)

	cmd := exec.Command(bin, "relay", "devices", "--data", relayData)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	want := "permission denied on the relay's admin socket " + filepath.Join(relayData, relayAdminsFile) +
		": run this as the relay's user (user root (uid 0)) or as root"
	if err == nil || !strings.Contains(string(out), want) {
		t.Fatalf("relay devices as uid 65534: %q %v, want %q", out, err, want)
	}
}
