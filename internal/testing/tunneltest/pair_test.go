package tunneltest

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/burrow-tunnel/burrow/client"
	"github.com/burrow-tunnel/burrow/device"
	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/pairing"
	"github.com/burrow-tunnel/burrow/paths"
	"github.com/burrow-tunnel/burrow/relayproto"
	"github.com/burrow-tunnel/burrow/session"
)

// pairingDevice starts a device with roles viewer (rtsp) and admin (all),
// a state directory and no fixed clients.
func pairingDevice(t *testing.T, r *Relay, rtsp, http string) *device.Device {
	t.Helper()
	return StartDevice(t, r, device.Config{
		Name:     "cam",
		Services: map[string]string{"rtsp": rtsp, "http": http},
		Roles:    map[string][]string{"viewer": {"rtsp"}, "admin": {device.AllServices}},
		StateDir: t.TempDir(),
	})
}

func ctx10(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// echoOnce opens a tunnel, sends a line and checks it comes back.
func echoOnce(t *testing.T, c *client.Client, dev identity.ID, service string) error {
	t.Helper()
	tun, err := c.Dial(ctx10(t), dev, service)
	if err != nil {
		return err
	}
	defer tun.Close()
	tun.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := tun.Write([]byte("ping")); err != nil {
		return err
	}
	b := make([]byte, 4)
	if _, err := io.ReadFull(tun, b); err != nil {
		return err
	}
	if string(b) != "ping" {
		return errors.New("echo mismatch")
	}
	return nil
}

// TestInvitePairConnect: invite → pair → connect → data flows; the same
// invite fails the second time; an expired invite fails.
func TestInvitePairConnect(t *testing.T) {
	rtsp := StartServer(t, Echo)
	r := StartRelay(t)
	d := pairingDevice(t, r, rtsp.Addr, "127.0.0.1:1")
	inv, err := d.Invite("viewer", time.Minute, "alice")
	if err != nil {
		t.Fatal(err)
	}
	// The invite travels as a string.
	inv, err = pairing.Parse(inv.String())
	if err != nil {
		t.Fatal(err)
	}
	alice := StartClient(t, r, nil)
	p, err := alice.Pair(ctx10(t), inv)
	if err != nil {
		t.Fatal(err)
	}
	if p.Role != "viewer" || len(p.Services) != 1 || p.Services[0] != "rtsp" {
		t.Fatalf("paired %+v", p)
	}
	if err := echoOnce(t, alice, d.ID(), "rtsp"); err != nil {
		t.Fatal(err)
	}
	users := d.Users()
	if len(users) != 1 || users[0].Name != "alice" || users[0].Role != "viewer" || users[0].ID != alice.ID() {
		t.Fatalf("users %+v", users)
	}

	// Used: another client is stopped at the relay (the invite's token is
	// no longer listed).
	bob := StartClient(t, r, nil)
	if _, err := bob.Pair(ctx10(t), inv); err == nil || !strings.Contains(err.Error(), "expired, was used") {
		t.Fatalf("second use: err = %v", err)
	}
	// Expired.
	short, err := d.Invite("viewer", time.Second, "")
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(1100 * time.Millisecond)
	if _, err := bob.Pair(ctx10(t), short); err == nil || !strings.Contains(err.Error(), "expired") {
		t.Fatalf("expired invite: err = %v", err)
	}
	if err := echoOnce(t, bob, d.ID(), "rtsp"); !errors.Is(err, client.ErrUnreachable) {
		t.Fatalf("bob after failed pairing: err = %v", err)
	}
}

// TestPairingSurvivesRestart: paired users and pending invites are kept in
// the state directory.
func TestPairingSurvivesRestart(t *testing.T) {
	rtsp := StartServer(t, Echo)
	r := StartRelay(t)
	state := t.TempDir()
	id := NewIdentity(t)
	cfg := device.Config{Identity: id, Services: map[string]string{"rtsp": rtsp.Addr},
		Roles: map[string][]string{"viewer": {"rtsp"}}, StateDir: state}
	d := StartDevice(t, r, cfg)
	inv1, _ := d.Invite("", time.Minute, "first")
	inv2, _ := d.Invite("", time.Minute, "second")
	c1 := StartClient(t, r, nil)
	if _, err := c1.Pair(ctx10(t), inv1); err != nil {
		t.Fatal(err)
	}
	d.Close()
	c1.Close()

	d = StartDevice(t, r, cfg)
	c1 = StartClient(t, r, nil)
	if err := echoOnce(t, c1, d.ID(), "rtsp"); err == nil {
		t.Fatal("a new client got in")
	}
	c2 := StartClient(t, r, nil)
	if _, err := c2.Pair(ctx10(t), inv2); err != nil {
		t.Fatalf("invite made before the restart: %v", err)
	}
	if err := echoOnce(t, c2, d.ID(), "rtsp"); err != nil {
		t.Fatal(err)
	}
	if n := len(d.Users()); n != 2 {
		t.Fatalf("%d users after restart, want 2", n)
	}
}

// TestRoles: a viewer opens rtsp but not http, on the session it already
// has too, and the http service never sees a connection.
func TestRoles(t *testing.T) {
	rtsp := StartServer(t, Echo)
	httpSrv := StartServer(t, Echo)
	r := StartRelay(t)
	d := pairingDevice(t, r, rtsp.Addr, httpSrv.Addr)
	inv, _ := d.Invite("viewer", time.Minute, "")
	c := StartClient(t, r, nil)
	if _, err := c.Pair(ctx10(t), inv); err != nil {
		t.Fatal(err)
	}
	if err := echoOnce(t, c, d.ID(), "rtsp"); err != nil {
		t.Fatal(err)
	}
	_, err := c.Dial(ctx10(t), d.ID(), "http")
	if !errors.Is(err, session.ErrNotAuthorized) || !strings.Contains(err.Error(), `"http"`) {
		t.Fatalf("viewer → http: err = %v", err)
	}
	if err := echoOnce(t, c, d.ID(), "rtsp"); err != nil {
		t.Fatalf("rtsp after the refusal: %v", err)
	}
	if n := httpSrv.Accepted.Load(); n != 0 {
		t.Fatalf("http accepted %d connections", n)
	}
}

// TestRevoke: revocation closes the client's open tunnel within a second
// and refuses its next attempt; another client is unaffected.
func TestRevoke(t *testing.T) {
	rtsp := StartServer(t, Echo)
	r := StartRelay(t)
	d := pairingDevice(t, r, rtsp.Addr, "127.0.0.1:1")
	pair := func(name string) *client.Client {
		inv, err := d.Invite("viewer", time.Minute, name)
		if err != nil {
			t.Fatal(err)
		}
		c := StartClient(t, r, nil)
		if _, err := c.Pair(ctx10(t), inv); err != nil {
			t.Fatal(err)
		}
		return c
	}
	mallory, alice := pair("mallory"), pair("alice")
	open := func(c *client.Client) net.Conn {
		tun, err := c.Dial(ctx10(t), d.ID(), "rtsp")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { tun.Close() })
		tun.Write([]byte("x"))
		io.ReadFull(tun, make([]byte, 1))
		return tun
	}
	mt, at := open(mallory), open(alice)

	if _, err := d.Revoke("mallory"); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	mt.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err := mt.Read(make([]byte, 1))
	if err == nil || time.Since(start) > time.Second {
		t.Fatalf("revoked tunnel: read %v after %v, want it closed within 1s", err, time.Since(start))
	}
	waitUnreachable(t, mallory, d.ID())
	// Alice's open tunnel and new ones still work.
	at.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := at.Write([]byte("y")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(at, make([]byte, 1)); err != nil {
		t.Fatalf("alice's tunnel after the revocation: %v", err)
	}
	if err := echoOnce(t, alice, d.ID(), "rtsp"); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Revoke("nobody"); !errors.Is(err, device.ErrUnknownUser) {
		t.Fatalf("revoke nobody: err = %v", err)
	}
}

// TestRelayDropsStrangers: a client the device never allowed is told the
// device is unreachable by the relay, and the device receives not one
// packet from it.
func TestRelayDropsStrangers(t *testing.T) {
	rtsp := StartServer(t, Echo)
	r := StartRelay(t)
	d := pairingDevice(t, r, rtsp.Addr, "127.0.0.1:1")
	stranger := StartClient(t, r, nil)
	time.Sleep(100 * time.Millisecond) // let the device's own start-up traffic settle
	before := d.Status().Relay.Received
	start := time.Now()
	_, err := stranger.Dial(ctx10(t), d.ID(), "rtsp")
	if !errors.Is(err, client.ErrUnreachable) || !strings.Contains(err.Error(), "has not authorized this client") {
		t.Fatalf("stranger: err = %v", err)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Fatalf("refused after %v", took)
	}
	for range 5 {
		stranger.Dial(ctx10(t), d.ID(), "rtsp")
	}
	time.Sleep(100 * time.Millisecond)
	if got := d.Status().Relay.Received - before; got != 0 {
		t.Fatalf("the device received %d packets from a client it never allowed", got)
	}
	if n := rtsp.Accepted.Load(); n != 0 {
		t.Fatalf("rtsp accepted %d connections", n)
	}
}

// TestPairWithWrongDeviceKey: an invite whose device ID is answered by
// another key fails with a key mismatch; the impostor never gets a
// session, so never a stream carrying the secret.
func TestPairWithWrongDeviceKey(t *testing.T) {
	r := StartRelay(t)
	pinned, actual := NewIdentity(t), NewIdentity(t)
	secret := pairing.NewSecret()
	pc := ListenPaths(t, r, paths.Config{Identity: pinned, Role: relayproto.RoleDevice,
		Access: func() ([]identity.ID, [][32]byte) { return nil, [][32]byte{secret.RelayToken()} }})
	ep, err := session.NewEndpoint(pc, session.Config{Identity: actual})
	if err != nil {
		t.Fatal(err)
	}
	defer ep.Close()
	ln, err := ep.Listen()
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	sessions := make(chan *session.Session, 1)
	go func() {
		if s, err := ln.Accept(context.Background()); err == nil {
			sessions <- s
		}
	}()
	if err := pc.WaitAttached(ctx10(t)); err != nil {
		t.Fatal(err)
	}
	c := StartClient(t, r, nil)
	inv := pairing.Invite{Device: pinned.ID(), Relay: r.Addr, RelayID: r.Identity.ID(), Secret: secret, Expires: time.Now().Add(time.Minute)}
	_, err = c.Pair(ctx10(t), inv)
	if !errors.Is(err, identity.ErrKeyMismatch) {
		t.Fatalf("err = %v, want a key mismatch", err)
	}
	select {
	case <-sessions:
		t.Fatal("the impostor got a session")
	case <-time.After(500 * time.Millisecond):
	}
}

// TestPairingBruteForce: someone who knows an invite's relay token (say,
// the relay) but not its secret sends wrong secrets for it, each from a
// new key: after five, the invite is locked, and the sixth attempt, even
// with the right secret, is refused without being checked. Another
// invite still works; once the lock ends, the right secret (never spent)
// works.
func TestPairingBruteForce(t *testing.T) {
	t.Parallel() // it waits out a 10s lock
	rtsp := StartServer(t, Echo)
	r := StartRelay(t)
	d := pairingDevice(t, r, rtsp.Addr, "127.0.0.1:1")
	inv, err := d.Invite("viewer", time.Minute, "")
	if err != nil {
		t.Fatal(err)
	}
	other, err := d.Invite("viewer", time.Minute, "")
	if err != nil {
		t.Fatal(err)
	}
	token := inv.Secret.RelayToken()
	// A request that names no invite is refused, the right secret
	// included: no invite would count its failures.
	_, _, err = rawSession(t, r, NewIdentity(t), d, &inv).Pair(ctx10(t), [32]byte{}, inv.Secret[:])
	if refused, ok := errors.AsType[*session.RefusedError](err); !ok || refused.Code != session.CodeBadRequest || !strings.Contains(err.Error(), "names no invite") {
		t.Fatalf("a request naming no invite: err = %v", err)
	}
	for i := range 5 {
		s := rawSession(t, r, NewIdentity(t), d, &inv)
		wrong := pairing.NewSecret()
		_, _, err := s.Pair(ctx10(t), token, wrong[:])
		if !errors.Is(err, session.ErrNotAuthorized) {
			t.Fatalf("wrong secret %d: err = %v", i+1, err)
		}
	}
	start := time.Now()
	s := rawSession(t, r, NewIdentity(t), d, &inv)
	_, _, err = s.Pair(ctx10(t), token, inv.Secret[:])
	if !errors.Is(err, session.ErrRateLimited) || !strings.Contains(err.Error(), "wrong secrets for this invite; try again in") {
		t.Fatalf("sixth attempt: err = %v, want a refusal without a check", err)
	}
	if n := len(d.Users()); n != 0 {
		t.Fatalf("%d users after the lock", n)
	}
	if _, err := StartClient(t, r, nil).Pair(ctx10(t), other); err != nil {
		t.Fatalf("another invite while the first is locked: %v", err)
	}
	time.Sleep(10*time.Second - time.Since(start) + 100*time.Millisecond)
	if _, _, err := s.Pair(ctx10(t), token, inv.Secret[:]); err != nil {
		t.Fatalf("right secret after the lock: %v", err)
	}
}

// TestPairingGuessesLockOnlyTheGuesser: a paired viewer that sends wrong
// secrets locks pairing for itself only. A second client holding a valid
// invite pairs at once, while the viewer is still refused, even with a
// right secret, without a check.
func TestPairingGuessesLockOnlyTheGuesser(t *testing.T) {
	rtsp := StartServer(t, Echo)
	r := StartRelay(t)
	d := pairingDevice(t, r, rtsp.Addr, "127.0.0.1:1")
	pair := func(c *client.Client, inv pairing.Invite) error {
		t.Helper()
		_, err := c.Pair(ctx10(t), inv)
		return err
	}
	invite := func(role, name string) pairing.Invite {
		t.Helper()
		inv, err := d.Invite(role, time.Minute, name)
		if err != nil {
			t.Fatal(err)
		}
		return inv
	}
	mallory := StartClient(t, r, nil)
	if err := pair(mallory, invite("viewer", "mallory")); err != nil {
		t.Fatal(err)
	}
	forAlice := invite("admin", "alice")
	// Mallory, a known client, guesses: invites of this device with
	// made-up secrets.
	for i := range 6 {
		guess := forAlice
		guess.Secret = pairing.NewSecret()
		err := pair(mallory, guess)
		want := session.ErrNotAuthorized
		if i == 5 {
			want = session.ErrRateLimited
		}
		if !errors.Is(err, want) {
			t.Fatalf("wrong secret %d: err = %v, want %v", i+1, err, want)
		}
	}
	alice := StartClient(t, r, nil)
	if err := pair(alice, forAlice); err != nil {
		t.Fatalf("alice's valid invite after mallory's guesses: %v", err)
	}
	if err := echoOnce(t, alice, d.ID(), "rtsp"); err != nil {
		t.Fatalf("alice's tunnel: %v", err)
	}
	// Mallory is still locked out: a right secret is refused unchecked,
	// and stays valid for whoever it was meant for.
	forBob := invite("viewer", "bob")
	if err := pair(mallory, forBob); !errors.Is(err, session.ErrRateLimited) || !strings.Contains(err.Error(), "try again in") {
		t.Fatalf("mallory with a right secret while locked: err = %v", err)
	}
	if err := pair(StartClient(t, r, nil), forBob); err != nil {
		t.Fatalf("bob's invite, after mallory tried it while locked: %v", err)
	}
}

// syncBuffer is a log sink safe for concurrent writers.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestSecretNeverLogged: no log line of device, client or relay carries an
// invite's secret, in any encoding, through a pairing and a failed one.
func TestSecretNeverLogged(t *testing.T) {
	var logs syncBuffer
	log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	rtsp := StartServer(t, Echo)
	r := StartRelay(t)
	d := StartDevice(t, r, device.Config{
		Services: map[string]string{"rtsp": rtsp.Addr},
		Roles:    map[string][]string{"viewer": {"rtsp"}},
		StateDir: t.TempDir(),
		Logger:   log,
	})
	inv, err := d.Invite("", time.Minute, "")
	if err != nil {
		t.Fatal(err)
	}
	c := NewClient(t, client.Config{Relay: r.Pin(), Logger: log})
	if err := c.WaitAttached(ctx10(t)); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Pair(ctx10(t), inv); err != nil {
		t.Fatal(err)
	}
	c.Pair(ctx10(t), inv) // used: refused
	all := logs.String()
	for _, form := range []string{inv.Secret.String(), fmt.Sprintf("%x", inv.Secret[:]), fmt.Sprintf("%X", inv.Secret[:]), base64.StdEncoding.EncodeToString(inv.Secret[:])} {
		if strings.Contains(all, form) {
			t.Fatalf("a log line carries the secret (%s)", form)
		}
	}
	if !strings.Contains(all, "client paired") {
		t.Fatal("the capture missed the pairing: the check would prove nothing")
	}
}

// TestReplayedAttachGetsNowhere: the bytes a device sent inside its TLS
// connection to the relay (upgrade, signed hello, access list), replayed on
// a new TLS connection, attach nothing: the hello is bound to the TLS
// connection it was made for.
func TestReplayedAttachGetsNowhere(t *testing.T) {
	r := NewRelay(t)
	var mu sync.Mutex
	var bufs []*bytes.Buffer
	r.Wrap = func(c net.Conn) net.Conn {
		mu.Lock()
		defer mu.Unlock()
		b := new(bytes.Buffer)
		bufs = append(bufs, b)
		return recorder{Conn: c, mu: &mu, buf: b}
	}
	r.Start()
	srv := StartServer(t, Echo)
	cid := NewIdentity(t)
	d := StartDevice(t, r, device.Config{
		Services: map[string]string{"echo": srv.Addr},
		Clients:  map[identity.ID][]string{cid.ID(): {"echo"}},
	})
	time.Sleep(200 * time.Millisecond) // the access list follows the hello
	mu.Lock()
	if len(bufs) != 1 {
		mu.Unlock()
		t.Fatalf("%d connections recorded, want the device's one", len(bufs))
	}
	captured := bytes.Clone(bufs[0].Bytes())
	mu.Unlock()
	if !bytes.Contains(captured, []byte("Upgrade")) || len(captured) < 200 {
		t.Fatalf("captured %d bytes: not the device's attach", len(captured))
	}
	d.Close()
	for r.Server().Stats().Devices != 0 {
		time.Sleep(10 * time.Millisecond)
	}

	conn, err := tls.Dial("tcp", r.Addr, &tls.Config{MinVersion: tls.VersionTLS13, InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.Write(captured); err != nil {
		t.Fatal(err)
	}
	// The relay ends the connection; the device never shows as attached.
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	done := make(chan error, 1)
	go func() {
		_, err := io.Copy(io.Discard, conn)
		done <- err
	}()
	deadline := time.After(10 * time.Second)
	for {
		if n := r.Server().Stats().Devices; n != 0 {
			t.Fatalf("the replayed attach made %d device sessions", n)
		}
		select {
		case err := <-done:
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				t.Fatal("the relay kept the replaying connection open")
			}
			return
		case <-deadline:
			t.Fatal("the relay kept the replaying connection open")
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// TestAttachUnderIdleFlood: while 5,000 connections that never
// authenticate are held open against the relay (from 100 addresses, within
// the per-address cap), a real device still attaches in under 2s and a
// tunnel works.
func TestAttachUnderIdleFlood(t *testing.T) {
	const addrs, perAddr = 100, 50
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil || lim.Cur < 2*addrs*perAddr+1000 {
		t.Skipf("needs %d open files, the limit is %d", 2*addrs*perAddr+1000, lim.Cur)
	}
	r := StartRelay(t)
	var idle []net.Conn
	defer func() {
		for _, c := range idle {
			c.Close()
		}
	}()
	for i := range addrs {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 3, byte(i+1))}}
		for range perAddr {
			c, err := d.Dial("tcp", r.Addr)
			if err != nil {
				t.Fatalf("idle connection %d: %v", len(idle), err)
			}
			idle = append(idle, c)
		}
	}
	srv := StartServer(t, Echo)
	cid := NewIdentity(t)
	start := time.Now()
	d := StartDevice(t, r, device.Config{
		Services: map[string]string{"echo": srv.Addr},
		Clients:  map[identity.ID][]string{cid.ID(): {"echo"}},
	})
	if took := time.Since(start); took > 2*time.Second {
		t.Fatalf("the device attached after %v with %d idle connections held", took, len(idle))
	} else {
		t.Logf("attached in %v with %d idle connections held", took, len(idle))
	}
	c := StartClient(t, r, cid)
	if err := echoOnce(t, c, d.ID(), "echo"); err != nil {
		t.Fatal(err)
	}
	// They were all held, not refused.
	for _, c := range idle[:10] {
		c.SetReadDeadline(time.Now().Add(time.Millisecond))
		if _, err := c.Read(make([]byte, 1)); err == nil || !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("an idle connection was closed before its time: %v", err)
		}
	}
}

// waitUnreachable waits until c, a client its device has just revoked, is
// no longer routed to dev by the relay. Until c has seen its session end
// (a moment after its tunnels did), a tunnel on that session hears the
// device's own refusal, "revoked"; after, the relay's "unreachable". Any
// other answer, or none within 5s, fails the test.
func waitUnreachable(t *testing.T, c *client.Client, dev identity.ID) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		_, err := c.Dial(ctx10(t), dev, "rtsp")
		if errors.Is(err, client.ErrUnreachable) {
			return
		}
		if !errors.Is(err, session.ErrNotAuthorized) || time.Now().After(deadline) {
			t.Fatalf("revoked client's next tunnel: err = %v, want unreachable", err)
		}
	}
}
