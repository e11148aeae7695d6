package main

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/burrow-tunnel/burrow/internal/testing/promtest"
	"github.com/burrow-tunnel/burrow/internal/testing/tunneltest"
)

var reMetricsListening = regexp.MustCompile(`msg="metrics listening" addr=(\S+)`)

// scrapeMetrics scrapes the metrics listener at addr.
func scrapeMetrics(t *testing.T, addr string) map[string]*dto.MetricFamily {
	return promtest.Scrape(t, "http://"+addr+"/metrics")
}

var metricValue = promtest.Value

var httpGet = promtest.Get

// TestBinaryRelayMetrics: a relay with --metrics, a device enrolled with a
// token, a client moving bytes through "burrow connect", a device the
// relay refuses, one with a bad token, a device that comes back, a
// connection that is no TLS and pending connections past the per-address
// bound: a scrape shows every one of them counted, /healthz and /readyz
// answer, and /readyz says "draining" while the relay drains.
func TestBinaryRelayMetrics(t *testing.T) {
	dir := t.TempDir()
	relayData := filepath.Join(dir, "relay")
	mustRun(t, "relay", "id", "--data", relayData)
	tokenOut, _, err := run(t, "relay", "token", "create", "--data", relayData, "--uses", "1", "--name", "cam1")
	if err != nil {
		t.Fatal(err)
	}
	relay := start(t, "relay", "relay", "--listen", "127.0.0.1:0", "--data", relayData, "--no-udp",
		"--metrics", "127.0.0.1:0", "--max-pending-per-ip", "3", "--drain", "20s", "--drain-idle", "10s")
	m, _ := relay.waitFor(reRelayListening, 0, 10*time.Second)
	relayAddr, relayID := m[1], m[2]
	m, _ = relay.waitFor(reMetricsListening, 0, 10*time.Second)
	metrics := m[1]

	id := func(name string) string {
		out, _, err := run(t, "id", "--identity", filepath.Join(dir, name+".key"))
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(out)
	}
	clientID, deviceID := id("client"), id("device")
	echo := tunneltest.StartServer(t, tunneltest.Echo)
	device := func(name, token string) *proc {
		cfg := filepath.Join(dir, name+".yaml")
		body := fmt.Sprintf("relay: %s\nrelay_id: %s\nidentity: %s.key\nstate: %[3]s-state\nservices:\n  echo: %[4]s\nclients:\n  %[5]s: [echo]\ndirect: false\n",
			relayAddr, relayID, name, echo.Addr, clientID)
		if token != "" {
			body += "enroll_token: " + token + "\n"
		}
		if err := os.WriteFile(cfg, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return start(t, name, "device", "--config", cfg)
	}
	dev := device("device", strings.TrimSpace(tokenOut))
	dev.waitFor(reAttached, 0, 10*time.Second)
	conn := start(t, "connect", "connect", deviceID, "echo", "--relay", relayAddr, "--relay-id", relayID,
		"--identity", filepath.Join(dir, "client.key"), "--no-direct")
	m, _ = conn.waitFor(reListening, 0, 10*time.Second)
	c, err := net.Dial("tcp", m[1])
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	msg := bytes.Repeat([]byte("metrics "), 8<<10)
	go c.Write(msg)
	got := make([]byte, len(msg))
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("echo through the tunnel: %v", err)
	}

	// The device stops and comes back: a reattach.
	dev.stop()
	dev = device("device", "")
	dev.waitFor(reAttached, 0, 10*time.Second)

	stranger := device("stranger", "")
	stranger.waitFor(regexp.MustCompile(`is not enrolled on this relay`), 0, 10*time.Second)
	badToken := device("badtoken", "enroll-nosuchtoken")
	badToken.waitFor(regexp.MustCompile(`enrollment token was refused`), 0, 10*time.Second)
	if nc, err := net.Dial("tcp", relayAddr); err == nil { // no TLS
		nc.Write([]byte("GET / HTTP/1.1\r\nHost: relay\r\n\r\n"))
		io.Copy(io.Discard, nc)
		nc.Close()
	}
	// Pending connections past --max-pending-per-ip: the fourth is closed.
	var held []net.Conn
	for range 4 {
		nc, err := net.Dial("tcp", relayAddr)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, nc)
	}
	held[3].SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := held[3].Read(make([]byte, 1)); err == nil {
		t.Fatal("a fourth pending connection from one address got bytes, want it closed")
	}
	for _, nc := range held {
		nc.Close()
	}

	// The TLS failure is counted when the relay's HTTP server lets the
	// connection go: wait for it.
	var mfs map[string]*dto.MetricFamily
	for deadline := time.Now().Add(10 * time.Second); ; {
		mfs = scrapeMetrics(t, metrics)
		if v, _ := metricValue(mfs, "burrow_relay_handshake_failures_total", "reason", "tls"); v >= 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no TLS handshake failure counted")
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, w := range []struct {
		name   string
		labels []string
		min    float64
	}{
		{"burrow_relay_info", []string{"id", relayID}, 1},
		{"burrow_relay_devices_attached", nil, 1},
		{"burrow_relay_clients_attached", nil, 1},
		{"burrow_relay_forwarded_packets_total", nil, 10},
		{"burrow_relay_forwarded_bytes_total", nil, float64(2 * len(msg))},
		{"burrow_relay_refusals_total", []string{"role", "device", "reason", "not_allowed"}, 2},
		{"burrow_relay_handshake_failures_total", []string{"reason", "tls"}, 1},
		{"burrow_relay_preauth_rejections_total", []string{"reason", "per_ip"}, 1},
		{"burrow_relay_enrollments_total", []string{"result", "succeeded"}, 1},
		{"burrow_relay_enrollments_total", []string{"result", "failed"}, 1},
		{"burrow_relay_attaches_total", []string{"role", "device"}, 2},
		{"burrow_relay_attaches_total", []string{"role", "client"}, 1},
		{"burrow_relay_reattaches_total", []string{"role", "device"}, 1},
		{"go_goroutines", nil, 1},
		{"process_resident_memory_bytes", nil, 1},
	} {
		if v, ok := metricValue(mfs, w.name, w.labels...); !ok || v < w.min {
			t.Errorf("%s%v = %v (present: %v), want at least %v", w.name, w.labels, v, ok, w.min)
		}
	}
	// The client's pair with the device, on the relay path or quiet since.
	relayed, _ := metricValue(mfs, "burrow_relay_sessions", "path", "relay")
	quiet, _ := metricValue(mfs, "burrow_relay_sessions", "path", "direct_or_idle")
	if relayed+quiet != 1 {
		t.Errorf("burrow_relay_sessions: %v relayed, %v direct or idle; want the one pair", relayed, quiet)
	}
	for _, name := range []string{"burrow_relay_pending_connections", "burrow_relay_queue_dropped_packets_total",
		"burrow_relay_redirects_total", "burrow_relay_udp_datagrams_total", "burrow_relay_peer_gone_total"} {
		if _, ok := mfs[name]; !ok {
			t.Errorf("%s missing", name)
		}
	}

	if code, body := httpGet(t, "http://"+metrics+"/healthz"); code != 200 || body != "ok\n" {
		t.Errorf("/healthz: %d %q", code, body)
	}
	if code, body := httpGet(t, "http://"+metrics+"/readyz"); code != 200 {
		t.Errorf("/readyz: %d %q", code, body)
	}
	// The dashboard, on the same listener, to loopback: the device
	// attached, by ID and name, and the refusals.
	if code, body := httpGet(t, "http://"+metrics+"/"); code != 200 || !strings.Contains(body, deviceID) ||
		!strings.Contains(body, "<td>cam1</td>") || !strings.Contains(body, "not allowed: ") {
		t.Errorf("dashboard: %d, want 200 with the device %s (cam1) and its refusals:\n%s", code, deviceID, body)
	}
	// The client holds the drain open: /readyz says so meanwhile.
	relay.cmd.Process.Signal(syscall.SIGTERM)
	relay.waitFor(regexp.MustCompile(`msg="relay stopping: draining`), 0, 10*time.Second)
	if code, body := httpGet(t, "http://"+metrics+"/readyz"); code != 503 || body != "draining\n" {
		t.Errorf("/readyz while draining: %d %q", code, body)
	}
	if code, _ := httpGet(t, "http://"+metrics+"/healthz"); code != 200 {
		t.Errorf("/healthz while draining: %d", code)
	}
	conn.stop()
	select {
	case <-relay.done:
	case <-time.After(30 * time.Second):
		t.Fatal("the relay did not exit after its drain")
	}
	if _, err := net.Dial("tcp", metrics); err == nil {
		t.Error("the metrics listener outlived the relay")
	}
}

// TestBinaryRelayMetricsBusy: a --metrics address that cannot be bound
// stops the relay at start, saying what to do.
func TestBinaryRelayMetricsBusy(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	_, stderr, err := run(t, "relay", "--listen", "127.0.0.1:0", "--data", t.TempDir(), "--no-udp", "--metrics", ln.Addr().String())
	if err == nil || !strings.Contains(stderr, "metrics: cannot listen on "+ln.Addr().String()) || !strings.Contains(stderr, "choose another address") {
		t.Fatalf("relay with a busy --metrics address: %v, stderr %q", err, stderr)
	}
}

// TestBinaryRelayDashboardToken: with --dashboard-token-file the dashboard
// asks loopback too for the token, and a token file others may read is
// refused.
func TestBinaryRelayDashboardToken(t *testing.T) {
	dir := t.TempDir()
	relayData := filepath.Join(dir, "relay")
	tokenFile := filepath.Join(dir, "dash.token")
	const token = "0123456789abcdef0123"
	if err := os.WriteFile(tokenFile, []byte(token+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	args := []string{"relay", "--listen", "127.0.0.1:0", "--data", relayData, "--no-udp", "--metrics", "127.0.0.1:0", "--dashboard-token-file", tokenFile}
	if _, stderr, err := run(t, args...); err == nil || !strings.Contains(stderr, "chmod 600") {
		t.Fatalf("a token file readable by others: err %v, stderr %q; want a refusal that says chmod 600", err, stderr)
	}
	if err := os.Chmod(tokenFile, 0o600); err != nil {
		t.Fatal(err)
	}
	relay := start(t, "relay", args...)
	m, _ := relay.waitFor(reMetricsListening, 0, 10*time.Second)
	url := "http://" + m[1] + "/"
	if code, _ := httpGet(t, url); code != http.StatusUnauthorized {
		t.Errorf("dashboard without the token: %d, want 401", code)
	}
	req, _ := http.NewRequest("GET", url, nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("dashboard with the token: %s, want 200", resp.Status)
	}
	if code, _ := httpGet(t, "http://"+m[1]+"/healthz"); code != http.StatusOK {
		t.Errorf("/healthz needs no token: %d", code)
	}
}
