// Package tunneltest starts relays, devices and clients on loopback for
// tests, each stopped by the test's cleanup, and provides the TCP servers
// tests tunnel to.
package tunneltest

import (
	"bufio"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/burrow-tunnel/burrow/client"
	"github.com/burrow-tunnel/burrow/device"
	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/paths"
	"github.com/burrow-tunnel/burrow/relay"
	"github.com/burrow-tunnel/burrow/relaylink"
)

// Logger returns a logger writing to t.Log until the test ends.
func Logger(t testing.TB) *slog.Logger {
	w := &testWriter{t: t}
	t.Cleanup(w.stop)
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct {
	mu   sync.Mutex
	t    testing.TB
	done bool
}

func (w *testWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Helper()
		w.t.Log(strings.TrimSuffix(string(p), "\n"))
	}
	return len(p), nil
}

func (w *testWriter) stop() {
	w.mu.Lock()
	w.done = true
	w.mu.Unlock()
}

// NewIdentity returns a fresh identity or fails the test.
func NewIdentity(t testing.TB) *identity.Identity {
	t.Helper()
	id, err := identity.Generate()
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// Relay is a relay served on a loopback port; it can be stopped and
// started again on the same port.
type Relay struct {
	t        testing.TB
	Identity *identity.Identity
	Addr     string
	// Wrap, if set before Start, wraps every connection after TLS (so it
	// sees what the relay process reads and writes in the clear).
	Wrap  func(net.Conn) net.Conn
	Allow func(identity.ID) bool
	// Enroll, if set before Start, is the relay's Enroll (see
	// relay.Config.Enroll): it enrolls a device that presents a token.
	Enroll func(id identity.ID, token string) error
	// GetCertificate, if set before Start, serves a certificate other than
	// the relay's self-signed one.
	GetCertificate func(*tls.ClientHelloInfo) (*tls.Certificate, error)
	// DrainQuiet, if set before Start, is the relay's DrainQuiet (see
	// Shutdown).
	DrainQuiet time.Duration
	// FleetMap, if set before Start, is the relay's fleet map (see
	// relay.Config.FleetMap).
	FleetMap func() []byte
	// Presence, if set before Start, is the relay's presence in its
	// fleet (see relay.Config.Presence).
	Presence relay.Presence

	mu  sync.Mutex
	srv *relay.Server
	ln  net.Listener
	hs  *http.Server // set when Wrap is
	wg  sync.WaitGroup
}

// StartRelay starts an open relay (any device may attach) on loopback.
func StartRelay(t testing.TB) *Relay {
	t.Helper()
	r := NewRelay(t)
	r.Start()
	return r
}

// NewRelay returns a relay that is not started yet, so fields can be set.
func NewRelay(t testing.TB) *Relay {
	r := &Relay{t: t, Identity: NewIdentity(t), Allow: func(identity.ID) bool { return true }}
	t.Cleanup(r.Stop)
	return r
}

// Start starts the relay, on the port it had before if it ran before.
func (r *Relay) Start() {
	r.t.Helper()
	addr := r.Addr
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	var ln net.Listener
	var err error
	// The old port may take a moment to be free again.
	for deadline := time.Now().Add(5 * time.Second); ; {
		ln, err = net.Listen("tcp", addr)
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		r.t.Fatal(err)
	}
	// The UDP port for binding requests: the TCP port's number if free.
	udp, err := net.ListenPacket("udp", ln.Addr().String())
	if err != nil {
		udp, err = net.ListenPacket("udp", "127.0.0.1:0")
	}
	if err != nil {
		ln.Close()
		r.t.Fatal(err)
	}
	srv, err := relay.New(relay.Config{
		Identity:       r.Identity,
		AllowDevice:    r.Allow,
		Enroll:         r.Enroll,
		GetCertificate: r.GetCertificate,
		UDPPort:        udp.LocalAddr().(*net.UDPAddr).Port,
		Logger:         Logger(r.t).With("role", "relay"),
		DrainQuiet:     r.DrainQuiet,
		FleetMap:       r.FleetMap,
		Presence:       r.Presence,
	})
	if err != nil {
		ln.Close()
		udp.Close()
		r.t.Fatal(err)
	}
	r.wg.Go(func() { srv.ServeUDP(udp) })
	r.mu.Lock()
	defer r.mu.Unlock()
	r.srv, r.ln, r.Addr = srv, ln, ln.Addr().String()
	if r.Wrap == nil {
		r.wg.Go(func() { srv.Serve(ln) })
		return
	}
	// Terminate TLS here, so that Wrap sees the relay's plaintext, and
	// serve the relay as a plain handler.
	tlsLn := tls.NewListener(ln, srv.TLSConfig())
	r.hs = &http.Server{Handler: srv, ReadHeaderTimeout: 10 * time.Second}
	hs := r.hs
	r.wg.Go(func() { hs.Serve(wrapListener{tlsLn, r.Wrap}) })
}

type wrapListener struct {
	net.Listener
	wrap func(net.Conn) net.Conn
}

func (l wrapListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return l.wrap(c), nil
}

// Server returns the running relay server (nil when stopped).
func (r *Relay) Server() *relay.Server {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.srv
}

// Stop stops the relay and waits for it; it is idempotent.
func (r *Relay) Stop() { r.stop(nil) }

// Shutdown stops the relay gracefully ([relay.Server.Shutdown]): it drains
// until ctx is done or nothing is left to drain, then closes. It returns
// Shutdown's error; once it has returned, the relay can be started again.
// A relay that is not running returns nil.
func (r *Relay) Shutdown(ctx context.Context) error {
	var err error
	r.stop(func(srv *relay.Server) { err = srv.Shutdown(ctx) })
	return err
}

func (r *Relay) stop(shutdown func(*relay.Server)) {
	r.mu.Lock()
	srv, ln, hs := r.srv, r.ln, r.hs
	r.mu.Unlock()
	if srv == nil {
		return
	}
	if hs != nil {
		hs.Close() // the listener; the relay has the upgraded connections
	}
	if shutdown != nil {
		shutdown(srv)
	}
	srv.Close()
	ln.Close()
	r.wg.Wait()
	r.mu.Lock()
	if r.srv == srv {
		r.srv, r.ln, r.hs = nil, nil, nil
	}
	r.mu.Unlock()
}

// Pin returns the configuration agents use to attach to r.
func (r *Relay) Pin() relaylink.RelayConfig {
	return relaylink.RelayConfig{Addr: r.Addr, ID: r.Identity.ID()}
}

// Loopback are the direct-path options that keep an agent's direct paths
// on loopback: tests that want direct paths use them. Agents the harness
// starts without Direct.Addrs have direct paths off, so that no test sends
// to the machine's other addresses.
var Loopback = paths.DirectOptions{Addrs: []netip.Addr{netip.MustParseAddr("127.0.0.1")}}

// directDefault keeps an agent's sessions on the relay's TCP sessions
// unless the test gave addresses: no direct paths, and not the relay's
// UDP port either (the tests of the UDP relay path ask for it).
func directDefault(o *paths.DirectOptions) {
	if len(o.Addrs) == 0 && o.InterfaceAddrs == nil {
		o.Disable, o.NoRelayUDP = true, true
	}
}

// ListenPaths starts a bare path-layer connection to r with cfg (Relay
// and Logger filled in if unset, direct paths as for [StartDevice]), for
// tests that speak below the device and client packages. It is closed when
// the test ends.
func ListenPaths(t testing.TB, r *Relay, cfg paths.Config) *paths.Conn {
	t.Helper()
	if cfg.Relay.Addr == "" {
		cfg.Relay = r.Pin()
	}
	if cfg.Logger == nil {
		cfg.Logger = Logger(t)
	}
	directDefault(&cfg.Direct)
	pc, err := paths.Listen(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	return pc
}

// StartDevice starts a device on r with cfg, as NewDevice does, and
// waits until it is attached.
func StartDevice(t testing.TB, r *Relay, cfg device.Config) *device.Device {
	t.Helper()
	d := NewDevice(t, r, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := d.WaitAttached(ctx); err != nil {
		t.Fatal(err)
	}
	return d
}

// NewDevice starts a device on r with cfg without waiting for it to
// attach; Identity, Relay and Logger are filled in if unset, and direct
// paths are off unless cfg.Direct gives addresses (see [Loopback]). It
// is closed when the test ends.
func NewDevice(t testing.TB, r *Relay, cfg device.Config) *device.Device {
	t.Helper()
	if cfg.Identity == nil {
		cfg.Identity = NewIdentity(t)
	}
	if cfg.Relay.Addr == "" {
		cfg.Relay = r.Pin()
	}
	if cfg.Logger == nil {
		cfg.Logger = Logger(t).With("role", "device")
	}
	directDefault(&cfg.Direct)
	// Off the LAN: the test's network is not the test's to announce on.
	// The LAN tests run the device in a namespace of their own.
	cfg.NoLAN = true
	d, err := device.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

// StreamOf writes n bytes of a pseudo-random stream seeded by seed to w:
// the same bytes for the same seed and n, for tests that check a stream
// arrives intact ([StreamSum]).
func StreamOf(w io.Writer, seed uint64, n int64) error {
	rng := rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8), byte(seed >> 16)})
	buf := make([]byte, 64<<10)
	for n > 0 {
		k := min(int64(len(buf)), n)
		rng.Read(buf[:k])
		if _, err := w.Write(buf[:k]); err != nil {
			return err
		}
		n -= k
	}
	return nil
}

// StreamSum is the SHA-256 of StreamOf(seed, n).
func StreamSum(seed uint64, n int64) [32]byte {
	h := sha256.New()
	StreamOf(h, seed, n)
	return [32]byte(h.Sum(nil))
}

// StartClient starts a client on r with the given identity (a new one if
// nil). It waits until the client is attached.
func StartClient(t testing.TB, r *Relay, id *identity.Identity) *client.Client {
	t.Helper()
	c := NewClient(t, client.Config{Identity: id, Relay: r.Pin()})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.WaitAttached(ctx); err != nil {
		t.Fatal(err)
	}
	return c
}

// NewClient starts a client with cfg (Identity and Logger filled in if
// unset, direct paths as for [StartDevice]) without waiting for it to
// attach.
func NewClient(t testing.TB, cfg client.Config) *client.Client {
	t.Helper()
	if cfg.Identity == nil {
		cfg.Identity = NewIdentity(t)
	}
	if cfg.Logger == nil {
		cfg.Logger = Logger(t).With("role", "client")
	}
	directDefault(&cfg.Direct)
	cfg.NoLAN = true // as for StartDevice
	c, err := client.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// Server is a TCP server on loopback that runs a handler per connection
// and counts the connections it accepted.
type Server struct {
	Addr     string
	Accepted atomic.Int64
	ln       net.Listener
	wg       sync.WaitGroup
	mu       sync.Mutex
	conns    map[net.Conn]struct{}
}

// StartServer serves handle on a loopback port until the test ends.
func StartServer(t testing.TB, handle func(*net.TCPConn)) *Server {
	t.Helper()
	s, err := StartServerAt(t, "127.0.0.1:0", handle)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// StartServerAt serves handle on addr until the test ends (or Close).
func StartServerAt(t testing.TB, addr string, handle func(*net.TCPConn)) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	s := &Server{Addr: ln.Addr().String(), ln: ln, conns: make(map[net.Conn]struct{})}
	s.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.Accepted.Add(1)
			s.mu.Lock()
			s.conns[c] = struct{}{}
			s.mu.Unlock()
			s.wg.Go(func() {
				defer func() {
					c.Close()
					s.mu.Lock()
					delete(s.conns, c)
					s.mu.Unlock()
				}()
				handle(c.(*net.TCPConn))
			})
		}
	})
	t.Cleanup(s.Close)
	return s, nil
}

// Close stops the server, closes its connections and waits for handlers.
// It is idempotent.
func (s *Server) Close() {
	s.ln.Close()
	s.mu.Lock()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// Echo copies what it reads back, half-closing when the reader does.
func Echo(c *net.TCPConn) {
	io.Copy(c, c)
	c.CloseWrite()
}

// HTTPServer serves h on loopback until the test ends and returns its
// address.
func HTTPServer(t testing.TB, h http.Handler) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		hs.Serve(ln)
	}()
	t.Cleanup(func() {
		hs.Close()
		<-done
	})
	return ln.Addr().String()
}

// Forward serves a loopback listener through c to service on dev until the
// test ends, and returns the listener's address.
func Forward(t testing.TB, c *client.Client, dev identity.ID, service string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.Forward(ctx, ln, dev, service)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return ln.Addr().String()
}

// ReadLine reads one line from r or fails the test.
func ReadLine(t testing.TB, r *bufio.Reader) string {
	t.Helper()
	s, err := r.ReadString('\n')
	if err != nil {
		t.Fatalf("read line: %v (got %q)", err, s)
	}
	return strings.TrimSuffix(s, "\n")
}
