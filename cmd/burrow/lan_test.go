//go:build linux

package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/internal/testing/netns"
	"github.com/burrow-tunnel/burrow/lan"
	"github.com/burrow-tunnel/burrow/session"
)

// A lanNet is a LAN in network namespaces: on one bridge, a device (dev,
// 10.8.0.1), a client (cli, 10.8.0.2), the relay (rel, 10.8.0.3) and a
// stranger (imp, 10.8.0.4). The agents run as burrow processes inside
// their namespaces, with the LAN on, as a user runs them.
type lanNet struct {
	t   *testing.T
	n   *netns.Net
	dir string
	// The relay: its address and pinned ID (it may never run).
	relayAddr, relayID string
}

const lanRelayIP = "10.8.0.3"

var (
	reAnnounced = regexp.MustCompile(`msg="announced on the LAN"`)
	// The device's address on the LAN: 10.8.0.1 or its link-local one.
	reLANPath = regexp.MustCompile(`path=lan (10\.8\.0\.1|\[fe80::[0-9a-f:]+%eth0\]):\d+`)
)

func newLANNet(t *testing.T) *lanNet {
	t.Helper()
	if testing.Short() {
		t.Skip("skipped with -short: it runs several agents in network namespaces")
	}
	n := netns.New(t)
	n.Add("br", "dev", "cli", "rel", "imp")
	n.In("br", "ip", "link", "add", "br0", "type", "bridge", "mcast_snooping", "0")
	n.In("br", "ip", "link", "set", "br0", "up")
	for i, ns := range []string{"dev", "cli", "rel", "imp"} {
		port := "p" + ns
		n.Link("br", port, "", ns, "eth0", fmt.Sprintf("10.8.0.%d/24", i+1))
		n.In("br", "ip", "link", "set", port, "master", "br0")
	}
	l := &lanNet{t: t, n: n, dir: t.TempDir(), relayAddr: lanRelayIP + ":7443"}
	out, _, err := run(t, "relay", "id", "--data", filepath.Join(l.dir, "relay"))
	if err != nil {
		t.Fatal(err)
	}
	l.relayID = strings.TrimSpace(out)
	return l
}

// cmd is burrow with args inside namespace ns.
func (l *lanNet) cmd(ns string, args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", l.n.Name(ns), binary(l.t)}, args...)...)
}

// start runs burrow with args in ns until the test ends.
func (l *lanNet) start(name, ns string, args ...string) *proc {
	l.t.Helper()
	return startCmd(l.t, name, l.cmd(ns, args...))
}

// run runs burrow with args in ns to completion, with stdin.
func (l *lanNet) run(ns, stdin string, args ...string) (string, string, error) {
	l.t.Helper()
	cmd := l.cmd(ns, args...)
	cmd.Stdin = strings.NewReader(stdin)
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	done := make(chan error, 1)
	if err := cmd.Start(); err != nil {
		l.t.Fatal(err)
	}
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return stdout.String(), stderr.String(), err
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		<-done
		l.t.Fatalf("burrow %s did not finish within 30s", strings.Join(args, " "))
		return "", "", nil
	}
}

// id returns the ID of the key in file name (created if missing).
func (l *lanNet) id(name string) string {
	l.t.Helper()
	out, _, err := run(l.t, "id", "--identity", filepath.Join(l.dir, name))
	if err != nil {
		l.t.Fatal(err)
	}
	return strings.TrimSpace(out)
}

// startRelay runs the relay in rel until the test ends.
func (l *lanNet) startRelay() *proc {
	l.t.Helper()
	p := l.start("relay", "rel", "relay", "--listen", l.relayAddr, "--data", filepath.Join(l.dir, "relay"), "--open")
	p.waitFor(reRelayListening, 0, 10*time.Second)
	return p
}

// blackholeRelay drops, in dev and cli, everything to and from the
// relay's address: it neither answers nor refuses.
func (l *lanNet) blackholeRelay() {
	for _, ns := range []string{"dev", "cli"} {
		l.n.In(ns, "iptables", "-A", "OUTPUT", "-d", lanRelayIP, "-j", "DROP")
		l.n.In(ns, "iptables", "-A", "INPUT", "-s", lanRelayIP, "-j", "DROP")
	}
}

// serve serves h on 127.0.0.1 inside ns until the test ends, and
// returns its address there.
func (l *lanNet) serve(ns string, h http.Handler) string {
	l.t.Helper()
	var ln net.Listener
	if err := l.n.Do(ns, func() (err error) {
		ln, err = net.Listen("tcp", "127.0.0.1:0")
		return err
	}); err != nil {
		l.t.Fatal(err)
	}
	hs := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	go hs.Serve(ln)
	l.t.Cleanup(func() { hs.Close() })
	return ln.Addr().String()
}

// echo serves an echo service on 127.0.0.1 inside ns until the test
// ends, and returns its address there.
func (l *lanNet) echo(ns string) string {
	l.t.Helper()
	var ln net.Listener
	if err := l.n.Do(ns, func() (err error) {
		ln, err = net.Listen("tcp", "127.0.0.1:0")
		return err
	}); err != nil {
		l.t.Fatal(err)
	}
	l.t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.Copy(c, c)
			}()
		}
	}()
	return ln.Addr().String()
}

// startDevice writes the device's configuration (relay, key dev.key, the
// given YAML) and runs it in dev until the test ends; it waits until the
// device is announced on the LAN.
func (l *lanNet) startDevice(name, ns, key, yaml string) (*proc, string) {
	l.t.Helper()
	cfg := filepath.Join(l.dir, name+".yaml")
	if !strings.Contains(yaml, "state:") {
		yaml += fmt.Sprintf("state: %s-state\n", name)
	}
	body := fmt.Sprintf("name: %s\nrelay: %s\nrelay_id: %s\nidentity: %s\n%s", name, l.relayAddr, l.relayID, key, yaml)
	if err := os.WriteFile(cfg, []byte(body), 0o600); err != nil {
		l.t.Fatal(err)
	}
	p := l.start(name, ns, "device", "--config", cfg)
	p.waitFor(reAnnounced, 0, 10*time.Second)
	return p, cfg
}

// announceAs answers, from ns, for the tag of device (an ID) with port:
// what anyone who copied the device's announcement can do.
func (l *lanNet) announceAs(ns, device string, port uint16) {
	l.t.Helper()
	id, err := identity.ParseID(device)
	if err != nil {
		l.t.Fatal(err)
	}
	var ann *lan.Announcer
	if err := l.n.Do(ns, func() (err error) {
		ann, err = lan.Announce(lan.AnnounceConfig{Device: id, Port: port, Interface: "eth0", Logger: slog.New(slog.DiscardHandler)})
		return err
	}); err != nil {
		l.t.Fatal(err)
	}
	l.t.Cleanup(func() { ann.Close() })
}

// get fetches http://addr/ (or http://addr if it has a path) from inside
// ns.
func (l *lanNet) get(ns, addr string) (string, error) {
	if !strings.Contains(addr, "/") {
		addr += "/"
	}
	tr := &http.Transport{DialContext: l.n.Dialer(ns), DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	resp, err := hc.Get("http://" + addr)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

func camPage(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "camera admin page") }

// TestLANRelayAndNoRelay: with the relay up and the device on the LAN, a
// session starts on the LAN (ping and device status say "lan ADDR");
// --no-lan keeps it off. Then the relay is killed and its address
// blackholed: a new connect reaches the device over the LAN, its first
// byte in under 2s (done-means 1 and 5 of LAN mode).
func TestLANRelayAndNoRelay(t *testing.T) {
	l := newLANNet(t)
	relay := l.startRelay()
	clientID := l.id("cli.key")
	devID := l.id("dev.key")
	web := l.serve("dev", http.HandlerFunc(camPage))
	dev, devCfg := l.startDevice("cam1", "dev", "dev.key", fmt.Sprintf("metrics: 127.0.0.1:9464\nservices:\n  http: %s\nclients:\n  %s: [http]\n", web, clientID))
	dev.waitFor(reAttached, 0, 10*time.Second)
	relayFlags := []string{"--relay", l.relayAddr, "--relay-id", l.relayID, "--identity", filepath.Join(l.dir, "cli.key")}

	// 5: relay and LAN both available: the LAN.
	ping := func(extra ...string) string {
		t.Helper()
		out, stderr, err := l.run("cli", "", append(append([]string{"ping", devID, "--count", "2", "--interval", "100ms"}, relayFlags...), extra...)...)
		if err != nil {
			t.Fatalf("ping %v: %v\n%s\n%s", extra, err, out, stderr)
		}
		return out
	}
	if out := ping(); !reLANPath.MatchString(out) {
		t.Fatalf("with the relay and the LAN, ping does not say the LAN:\n%s", out)
	}
	if out := ping("--no-lan"); strings.Contains(out, "path=lan") {
		t.Fatalf("ping --no-lan went over the LAN:\n%s", out)
	}
	// device status names the path of a session that is open now.
	conn := l.start("connect", "cli", append([]string{"connect", devID, "http", "--listen", "127.0.0.1:0"}, relayFlags...)...)
	m, _ := conn.waitFor(reListening, 0, 10*time.Second)
	if page, err := l.get("cli", m[1]); err != nil || page != "camera admin page" {
		t.Fatalf("through the LAN with the relay up: %q %v", page, err)
	}
	if out, stderr, err := l.run("dev", "", "device", "status", "--config", devCfg); err != nil ||
		!regexp.MustCompile(`lan (10\.8\.0\.2|\[fe80::[0-9a-f:]+%eth0\]):\d+`).MatchString(out) ||
		!regexp.MustCompile(`(?m)^lan: announced on eth0\(10\.8\.0\.1 [0-9a-f:]+\), port \d+$`).MatchString(out) {
		t.Fatalf("device status does not show the LAN announcement and the session on the LAN: %v\n%s\n%s", err, out, stderr)
	}
	if m, err := l.get("dev", "127.0.0.1:9464/metrics"); err != nil || !strings.Contains(m, `burrow_device_sessions{path="lan"} 1`) {
		t.Fatalf("the device's metrics do not count the session on the LAN: %v\n%s", err, m)
	}
	conn.stop()

	// 1: the relay is killed, and its address blackholed.
	relay.stop()
	l.blackholeRelay()
	begin := time.Now()
	conn = l.start("connect, relay down", "cli", append([]string{"connect", devID, "http", "--listen", "127.0.0.1:0"}, relayFlags...)...)
	m, _ = conn.waitFor(reListening, 0, 10*time.Second)
	page, err := l.get("cli", m[1])
	firstByte := time.Since(begin)
	if err != nil || page != "camera admin page" {
		t.Fatalf("with the relay down: %q %v", page, err)
	}
	t.Logf("relay down: connect started, listened and had the page in %v", firstByte.Round(time.Millisecond))
	if firstByte > 2*time.Second {
		t.Errorf("with the relay down, the first byte took %v, want under 2s", firstByte)
	}
	if out := ping(); !reLANPath.MatchString(out) {
		t.Fatalf("with the relay down, ping does not say the LAN:\n%s", out)
	}
}

// TestLANImpostor: a stranger on the LAN who answers for the device's tag
// (copied from the air) with an endpoint of its own, which takes any
// hello and shows a key of its own, gets a key mismatch: the client opens
// no tunnel there, so no byte of a service moves. Once the real device is
// on the LAN too, the client reaches it (done-means 2 of LAN mode).
func TestLANImpostor(t *testing.T) {
	l := newLANNet(t)
	l.blackholeRelay()
	clientID := l.id("cli.key")
	devID := l.id("dev.key")
	sessions, tunnels := l.impostor("imp", 4600)
	l.announceAs("imp", devID, 4600)

	conn := l.start("connect", "cli", "connect", devID, "http", "--listen", "127.0.0.1:0",
		"--relay", l.relayAddr, "--relay-id", l.relayID, "--identity", filepath.Join(l.dir, "cli.key"))
	m, _ := conn.waitFor(reListening, 0, 10*time.Second)
	if page, err := l.get("cli", m[1]); err == nil {
		t.Fatalf("the impostor's answer led somewhere: %q", page)
	}
	conn.waitFor(regexp.MustCompile(`key mismatch`), 0, 10*time.Second)
	if n := sessions.Load(); n != 0 {
		t.Fatalf("the impostor got %d sessions", n)
	}

	web := l.serve("dev", http.HandlerFunc(camPage))
	l.startDevice("cam1", "dev", "dev.key", fmt.Sprintf("services:\n  http: %s\nclients:\n  %s: [http]\n", web, clientID))
	if page, err := l.get("cli", m[1]); err != nil || page != "camera admin page" {
		t.Fatalf("with the real device on the LAN too: %q %v", page, err)
	}
	if n, k := sessions.Load(), tunnels.Load(); n != 0 || k != 0 {
		t.Fatalf("the impostor got %d sessions and %d tunnels", n, k)
	}
}

// impostor runs, in ns on UDP port, an end-to-end endpoint of a key of
// its own that takes every handshake (whatever its hello) until the test
// ends, and counts the sessions that open and the tunnels asked of them.
func (l *lanNet) impostor(ns string, port int) (sessions, tunnels *atomic.Int64) {
	l.t.Helper()
	var conn *net.UDPConn
	if err := l.n.Do(ns, func() (err error) {
		conn, err = net.ListenUDP("udp4", &net.UDPAddr{Port: port})
		return err
	}); err != nil {
		l.t.Fatal(err)
	}
	key, err := identity.Generate()
	if err != nil {
		l.t.Fatal(err)
	}
	ep, err := session.NewEndpoint(conn, session.Config{Identity: key})
	if err != nil {
		l.t.Fatal(err)
	}
	ln, err := ep.Listen()
	if err != nil {
		l.t.Fatal(err)
	}
	sessions, tunnels = new(atomic.Int64), new(atomic.Int64)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			s, err := ln.Accept(ctx)
			if err != nil {
				return
			}
			sessions.Add(1)
			go func() {
				for {
					if _, err := s.AcceptTunnel(ctx); err != nil {
						return
					}
					tunnels.Add(1)
				}
			}()
		}
	}()
	l.t.Cleanup(func() {
		cancel()
		ln.Close()
		ep.Close()
		conn.Close()
		<-done
	})
	return sessions, tunnels
}

// TestLANPairAndRevoke: with the relay down from the start, the device
// makes an invite and a client on the LAN pairs with it there, then
// reaches its services; revoking the client ends its open tunnel at once
// and refuses new ones (done-means 3 and 4 of LAN mode).
func TestLANPairAndRevoke(t *testing.T) {
	l := newLANNet(t)
	l.blackholeRelay()
	// A second network the device is on, not its owner's: lan_interface
	// keeps it from being announced there.
	l.n.Link("dev", "other0", "10.99.0.1/24", "imp", "other1", "10.99.0.2/24")
	echo := l.echo("dev")
	_, devCfg := l.startDevice("cam1", "dev", "dev.key", fmt.Sprintf("state: cam-state\nlan_interface: eth0\nservices:\n  echo: %s\nroles:\n  viewer: [echo]\n", echo))
	if out, stderr, err := l.run("dev", "", "device", "status", "--config", devCfg); err != nil ||
		!regexp.MustCompile(`(?m)^lan: announced on eth0\(10\.8\.0\.1[^)]*\), port \d+$`).MatchString(out) {
		t.Fatalf("device status of a device announced on eth0 only: %v\n%s\n%s", err, out, stderr)
	}

	// 4: pairing with the relay down.
	invite, stderr, err := l.run("dev", "", "device", "invite", "--config", devCfg, "--role", "viewer")
	if err != nil || !strings.HasPrefix(invite, "burrow://pair?") {
		t.Fatalf("invite with the relay down: %v\n%s\n%s", err, invite, stderr)
	}
	home := filepath.Join(l.dir, "home")
	out, stderr, err := l.run("cli", invite, "pair", "--home", home)
	if err != nil || !strings.Contains(out, "paired with cam1") {
		t.Fatalf("pair over the LAN: %v\n%s\n%s", err, out, stderr)
	}
	clientOut, _, err := run(t, "id", "--home", home)
	if err != nil {
		t.Fatal(err)
	}
	clientID := strings.TrimSpace(clientOut)

	conn := l.start("connect", "cli", "connect", "cam1", "echo", "--home", home, "--listen", "127.0.0.1:0")
	m, _ := conn.waitFor(reListening, 0, 10*time.Second)
	c, err := l.n.Dialer("cli")(context.Background(), "tcp", m[1])
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := bufio.NewReader(c)
	if _, err := io.WriteString(c, "hello\n"); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if line, err := r.ReadString('\n'); err != nil || line != "hello\n" {
		t.Fatalf("echo over the LAN: %q %v", line, err)
	}

	// 3: revocation with the relay down ends the open tunnel at once.
	if out, stderr, err := l.run("dev", "", "device", "revoke", clientID, "--config", devCfg); err != nil {
		t.Fatalf("revoke: %v\n%s\n%s", err, out, stderr)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if line, err := r.ReadString('\n'); err == nil {
		t.Fatalf("the revoked client's tunnel still carries data: %q", line)
	} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatal("the revoked client's tunnel is still open 5s after the revocation")
	}
	c2, err := l.n.Dialer("cli")(context.Background(), "tcp", m[1])
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	io.WriteString(c2, "again\n")
	c2.SetReadDeadline(time.Now().Add(10 * time.Second))
	if line, err := bufio.NewReader(c2).ReadString('\n'); err == nil {
		t.Fatalf("a revoked client opened a new tunnel: %q", line)
	}
}

// TestLANLiarDoesNotHoldRelay: someone on the LAN answers for the
// device's tag with an address where nothing answers (its packets are
// dropped there). The device, kept off the LAN (lan: false), is reached
// through the relay all the same, without waiting for the handshake on
// the LAN to time out (10s, longer than the request's own timeout).
func TestLANLiarDoesNotHoldRelay(t *testing.T) {
	l := newLANNet(t)
	l.startRelay()
	clientID := l.id("cli.key")
	devID := l.id("dev.key")
	web := l.serve("dev", http.HandlerFunc(camPage))
	cfg := filepath.Join(l.dir, "cam1.yaml")
	body := fmt.Sprintf("relay: %s\nrelay_id: %s\nidentity: dev.key\nlan: false\nservices:\n  http: %s\nclients:\n  %s: [http]\n", l.relayAddr, l.relayID, web, clientID)
	if err := os.WriteFile(cfg, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	dev := l.start("cam1", "dev", "device", "--config", cfg)
	dev.waitFor(reAttached, 0, 10*time.Second)

	l.n.In("imp", "iptables", "-A", "INPUT", "-p", "udp", "--dport", "4601", "-j", "DROP")
	l.announceAs("imp", devID, 4601)

	conn := l.start("connect", "cli", "connect", devID, "http", "--listen", "127.0.0.1:0",
		"--relay", l.relayAddr, "--relay-id", l.relayID, "--identity", filepath.Join(l.dir, "cli.key"))
	m, _ := conn.waitFor(reListening, 0, 10*time.Second)
	if page, err := l.get("cli", m[1]); err != nil || page != "camera admin page" {
		t.Fatalf("through the relay, with a liar on the LAN: %q %v", page, err)
	}
	out, stderr, err := l.run("cli", "", "ping", devID, "--count", "1", "--relay", l.relayAddr, "--relay-id", l.relayID, "--identity", filepath.Join(l.dir, "cli.key"))
	if err != nil || strings.Contains(out, "path=lan") {
		t.Fatalf("ping a device with lan: false: %v\n%s\n%s", err, out, stderr)
	}
}
