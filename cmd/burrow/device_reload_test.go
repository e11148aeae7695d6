package main

import (
	"fmt"
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

// TestBinaryDeviceSIGHUP: SIGHUP makes the device agent read its
// configuration again, not end: a service and its grant added to the file
// are served at once, a setting only a restart applies is named, and a
// file that no longer checks leaves the device as it was.
func TestBinaryDeviceSIGHUP(t *testing.T) {
	dir := t.TempDir()
	relay := start(t, "relay", "relay", "--listen", "127.0.0.1:0", "--data", filepath.Join(dir, "relay"), "--open", "--no-udp")
	m, _ := relay.waitFor(reRelayListening, 0, 10*time.Second)
	relayAddr, relayID := m[1], m[2]
	echo := tunneltest.StartServer(t, tunneltest.Echo)
	web := tunneltest.HTTPServer(t, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("web")) }))
	clientKey := filepath.Join(dir, "client.key")
	clientID := strings.TrimSpace(mustRun(t, "id", "--identity", clientKey))
	cfg := filepath.Join(dir, "cam.yaml")
	write := func(extra string) {
		body := fmt.Sprintf("relay: %s\nrelay_id: %s\nidentity: cam.key\ndirect: false\n%s", relayAddr, relayID, extra)
		if err := os.WriteFile(cfg, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(fmt.Sprintf("services:\n  echo: %s\nclients:\n  %s: [echo]\n", echo.Addr, clientID))
	camID := strings.TrimSpace(mustRun(t, "id", "--identity", filepath.Join(dir, "cam.key")))
	cam := start(t, "cam", "device", "--config", cfg)
	_, at := cam.waitFor(reAttached, 0, 10*time.Second)

	write(fmt.Sprintf("services:\n  echo: %s\n  web: %s\nclients:\n  %s: [echo, web]\nregion: eu\n", echo.Addr, web, clientID))
	cam.cmd.Process.Signal(syscall.SIGHUP)
	_, at = cam.waitFor(regexp.MustCompile(`SIGHUP: configuration reloaded, but some changes apply only after a restart.*reloaded=services,clients restart_to_apply=region`), at, 10*time.Second)
	conn := start(t, "connect", "connect", camID, "web", "--relay", relayAddr, "--relay-id", relayID, "--identity", clientKey, "--no-direct")
	lm, _ := conn.waitFor(reListening, 0, 10*time.Second)
	if _, err := get(t, lm[1]); err != nil {
		t.Fatalf("the service added by SIGHUP: %v", err)
	}

	write("services:\n  web: nothere\n")
	cam.cmd.Process.Signal(syscall.SIGHUP)
	cam.waitFor(regexp.MustCompile(`SIGHUP: the configuration does not (read|check); nothing reloaded`), at, 10*time.Second)
	if _, err := get(t, lm[1]); err != nil {
		t.Fatalf("the device after a SIGHUP with a broken file: %v", err)
	}
	select {
	case <-cam.done:
		t.Fatal("the device exited")
	default:
	}
}
