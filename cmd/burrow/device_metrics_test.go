package main

import (
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

	"github.com/burrow-tunnel/burrow/internal/testing/tunneltest"
)

func TestMetricsAddr(t *testing.T) {
	for _, tt := range []struct{ in, want string }{
		{"", ""},
		{"9100", "127.0.0.1:9100"},
		{"0.0.0.0:9100", "0.0.0.0:9100"},
		{"[::1]:9100", "[::1]:9100"},
		{":9100", ":9100"},
	} {
		if got, err := metricsAddr(tt.in); err != nil || got != tt.want {
			t.Errorf("metricsAddr(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
	for _, bad := range []string{"localhost", "host:port:9100", "99999x"} {
		if got, err := metricsAddr(bad); err == nil {
			t.Errorf("metricsAddr(%q) = %q, want an error", bad, got)
		}
	}
}

// httpGet gets url and returns the status and body.
func tryGet(t *testing.T, url string) (int, string, error) {
	t.Helper()
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := hc.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

var reServingMetrics = regexp.MustCompile(`msg="metrics listening" addr=(\S+)`)

// TestBinaryDeviceMetrics: burrow device --metrics serves /metrics,
// /healthz and /readyz while it runs, and nothing once it stopped; an
// address in use stops it at start, saying what to do; a metrics address
// changed in the file is named as needing a restart on SIGHUP.
func TestBinaryDeviceMetrics(t *testing.T) {
	dir := t.TempDir()
	relay := start(t, "relay", "relay", "--listen", "127.0.0.1:0", "--data", filepath.Join(dir, "relay"), "--open", "--no-udp")
	m, _ := relay.waitFor(reRelayListening, 0, 10*time.Second)
	cfg := filepath.Join(dir, "cam.yaml")
	write := func(metrics string) {
		body := fmt.Sprintf("relay: %s\nrelay_id: %s\nidentity: cam.key\ndirect: false\nmetrics: %s\nservices:\n  echo: 127.0.0.1:1\nclients:\n  %s: [echo]\n",
			m[1], m[2], metrics, tunneltest.NewIdentity(t).ID())
		if err := os.WriteFile(cfg, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("127.0.0.1:0")

	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	_, stderr, err := run(t, "device", "--config", cfg, "--metrics", busy.Addr().String())
	if err == nil || !strings.Contains(stderr, "metrics: cannot listen on "+busy.Addr().String()) || !strings.Contains(stderr, "choose another address") {
		t.Fatalf("device with its metrics address in use: err %v, stderr %q", err, stderr)
	}

	cam := start(t, "cam", "device", "--config", cfg)
	sm, _ := cam.waitFor(reServingMetrics, 0, 10*time.Second)
	_, at := cam.waitFor(reAttached, 0, 10*time.Second)
	base := "http://" + sm[1]
	code, body, err := tryGet(t, base+"/metrics")
	if err != nil || code != http.StatusOK {
		t.Fatalf("/metrics: %d %v", code, err)
	}
	for _, want := range []string{"burrow_device_relay_attached 1", `burrow_device_sessions{path="relay"} 0`,
		`burrow_device_tunnels_total{result="ok",service="echo"} 0`, "go_goroutines"} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q:\n%s", want, body)
		}
	}
	for _, path := range []string{"/healthz", "/readyz"} {
		if code, body, err := tryGet(t, base+path); err != nil || code != http.StatusOK {
			t.Errorf("%s: %d %q %v", path, code, body, err)
		}
	}

	write("127.0.0.1:1")
	cam.cmd.Process.Signal(syscall.SIGHUP)
	cam.waitFor(regexp.MustCompile(`SIGHUP: configuration reloaded, but some changes apply only after a restart.*restart_to_apply=metrics`), at, 10*time.Second)

	cam.stop()
	if _, _, err := tryGet(t, base+"/healthz"); err == nil {
		t.Error("the metrics listener still answers after the device stopped")
	}
}
