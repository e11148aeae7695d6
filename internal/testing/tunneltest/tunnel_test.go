package tunneltest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/burrow-tunnel/burrow/client"
	"github.com/burrow-tunnel/burrow/device"
	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/internal/testing/israce"
	"github.com/burrow-tunnel/burrow/paths"
	"github.com/burrow-tunnel/burrow/relaylink"
	"github.com/burrow-tunnel/burrow/relayproto"
	"github.com/burrow-tunnel/burrow/session"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// setup starts a relay, a device serving services to one client with all
// rights, and that client.
func setup(t *testing.T, services map[string]string) (*Relay, *device.Device, *client.Client) {
	t.Helper()
	r := StartRelay(t)
	cid := NewIdentity(t)
	d := StartDevice(t, r, device.Config{
		Services: services,
		Clients:  map[identity.ID][]string{cid.ID(): {device.AllServices}},
	})
	return r, d, StartClient(t, r, cid)
}

// randomStream is a reproducible stream of n random bytes.
func randomStream(seed uint64, n int64) io.Reader {
	return io.LimitReader(rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8)}), n)
}

func sum(r io.Reader) ([32]byte, int64, error) {
	h := sha256.New()
	n, err := io.Copy(h, r)
	return [32]byte(h.Sum(nil)), n, err
}

func TestHTTPThroughTunnel(t *testing.T) {
	web := HTTPServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from the device, path %s", r.URL.Path)
	}))
	_, d, c := setup(t, map[string]string{"http": web})
	addr := Forward(t, c, d.ID(), "http")

	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	for i := range 5 {
		if i == 3 {
			tr.CloseIdleConnections() // and some on fresh connections
		}
		resp, err := hc.Get(fmt.Sprintf("http://%s/page/%d", addr, i))
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		if want := fmt.Sprintf("hello from the device, path /page/%d", i); string(body) != want {
			t.Fatalf("body %q, want %q", body, want)
		}
	}
}

// TestBulkBothWays moves 64 MiB of random bytes each way, at once, through
// one tunnel and checks both with SHA-256.
func TestBulkBothWays(t *testing.T) {
	const size = 64 << 20
	if testing.Short() {
		t.Skip("moves 128 MiB")
	}
	serverGot := make(chan [32]byte, 1)
	srv := StartServer(t, func(c *net.TCPConn) {
		var wg sync.WaitGroup
		wg.Go(func() {
			io.Copy(c, randomStream(2, size))
			c.CloseWrite()
		})
		h, _, _ := sum(c)
		serverGot <- h
		wg.Wait()
	})
	_, d, c := setup(t, map[string]string{"bulk": srv.Addr})
	conn, err := net.Dial("tcp", Forward(t, c, d.ID(), "bulk"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	go func() {
		io.Copy(conn, randomStream(1, size))
		conn.(*net.TCPConn).CloseWrite()
	}()
	got, n, err := sum(conn)
	if err != nil || n != size {
		t.Fatalf("client read %d bytes, %v", n, err)
	}
	want, _, _ := sum(randomStream(2, size))
	if got != want {
		t.Fatal("device → client bytes differ")
	}
	want, _, _ = sum(randomStream(1, size))
	if <-serverGot != want {
		t.Fatal("client → device bytes differ")
	}
}

func TestConcurrentTunnels(t *testing.T) {
	const tunnels, size = 100, 256 << 10
	srv := StartServer(t, Echo)
	_, d, c := setup(t, map[string]string{"echo": srv.Addr})
	addr := Forward(t, c, d.ID(), "echo")
	var wg sync.WaitGroup
	errs := make(chan error, tunnels)
	for i := range tunnels {
		wg.Go(func() {
			conn, err := net.Dial("tcp", addr)
			if err != nil {
				errs <- err
				return
			}
			defer conn.Close()
			go func() {
				io.Copy(conn, randomStream(uint64(i), size))
				conn.(*net.TCPConn).CloseWrite()
			}()
			got, n, err := sum(conn)
			want, _, _ := sum(randomStream(uint64(i), size))
			if err != nil || n != size || got != want {
				errs <- fmt.Errorf("tunnel %d: %d bytes, err %v, match %v", i, n, err, got == want)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := srv.Accepted.Load(); n != tunnels {
		t.Fatalf("server accepted %d connections, want %d", n, tunnels)
	}
}

// Client half-closes first: the server answers only after EOF.
func TestHalfCloseClientFirst(t *testing.T) {
	srv := StartServer(t, func(c *net.TCPConn) {
		req, err := io.ReadAll(c)
		if err != nil {
			return
		}
		fmt.Fprintf(c, "got %d bytes: %s", len(req), req)
		c.CloseWrite()
	})
	_, d, c := setup(t, map[string]string{"svc": srv.Addr})
	conn, err := net.Dial("tcp", Forward(t, c, d.ID(), "svc"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.Write([]byte("question"))
	conn.(*net.TCPConn).CloseWrite()
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	reply, err := io.ReadAll(conn)
	if err != nil || string(reply) != "got 8 bytes: question" {
		t.Fatalf("reply %q, %v", reply, err)
	}
}

// Server half-closes first: the client reads EOF, then still sends, and the
// server still receives.
func TestHalfCloseServerFirst(t *testing.T) {
	serverGot := make(chan string, 1)
	srv := StartServer(t, func(c *net.TCPConn) {
		c.Write([]byte("banner"))
		c.CloseWrite()
		b, _ := io.ReadAll(c)
		serverGot <- string(b)
	})
	_, d, c := setup(t, map[string]string{"svc": srv.Addr})
	conn, err := net.Dial("tcp", Forward(t, c, d.ID(), "svc"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	banner, err := io.ReadAll(conn)
	if err != nil || string(banner) != "banner" {
		t.Fatalf("banner %q, %v", banner, err)
	}
	conn.Write([]byte("after eof"))
	conn.(*net.TCPConn).CloseWrite()
	select {
	case got := <-serverGot:
		if got != "after eof" {
			t.Fatalf("server got %q", got)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("server never got the client's bytes after the half-close")
	}
}

// A reset by the service resets the client's connection promptly, and a
// reset by the client closes the service's connection promptly.
func TestAbortPropagates(t *testing.T) {
	serverErr := make(chan error, 1)
	abort := make(chan bool, 2) // true: the server resets; false: it reads
	srv := StartServer(t, func(c *net.TCPConn) {
		c.Write([]byte("x"))
		if <-abort {
			c.SetLinger(0)
			c.Close()
			return
		}
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, err := io.ReadAll(c)
		serverErr <- err
	})
	_, d, c := setup(t, map[string]string{"svc": srv.Addr})
	addr := Forward(t, c, d.ID(), "svc")

	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	io.ReadFull(conn, make([]byte, 1))
	abort <- true
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	start := time.Now()
	_, err = conn.Read(make([]byte, 1))
	if ne, ok := errors.AsType[net.Error](err); err == nil || ok && ne.Timeout() {
		t.Fatalf("client read after the service reset: %v", err)
	}
	t.Logf("client saw the reset after %v: %v", time.Since(start), err)

	conn2, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	io.ReadFull(conn2, make([]byte, 1))
	abort <- false
	conn2.(*net.TCPConn).SetLinger(0)
	conn2.Close()
	if err := <-serverErr; err == nil {
		t.Fatal("service saw a clean close after the client reset")
	} else if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
		t.Fatal("service never saw the client's reset")
	}
}

// TestAccessDenied: a client not granted the service, or unknown to the
// device, is refused with a typed error, and the service never sees a
// connection.
func TestAccessDenied(t *testing.T) {
	rtsp := StartServer(t, Echo)
	admin := StartServer(t, Echo)
	r := StartRelay(t)
	viewer := NewIdentity(t)
	d := StartDevice(t, r, device.Config{
		Services: map[string]string{"rtsp": rtsp.Addr, "admin": admin.Addr},
		Clients:  map[identity.ID][]string{viewer.ID(): {"rtsp"}},
	})
	c := StartClient(t, r, viewer)
	stranger := StartClient(t, r, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	_, err := c.Dial(ctx, d.ID(), "admin")
	if !errors.Is(err, session.ErrNotAuthorized) {
		t.Fatalf("viewer → admin: err = %v, want ErrNotAuthorized", err)
	}
	if !strings.Contains(err.Error(), `not authorized for service "admin"`) {
		t.Fatalf("message %q does not name the service", err)
	}
	_, err = c.Dial(ctx, d.ID(), "ssh")
	var refused *session.RefusedError
	if !errors.Is(err, session.ErrUnknownService) || !errors.As(err, &refused) {
		t.Fatalf("viewer → ssh: err = %v, want ErrUnknownService", err)
	}
	if len(refused.Allowed) != 1 || refused.Allowed[0] != "rtsp" || !strings.Contains(err.Error(), "rtsp") {
		t.Fatalf("unknown service lists %v (%q), want the viewer's services only", refused.Allowed, err)
	}
	_, err = stranger.Dial(ctx, d.ID(), "rtsp")
	if !errors.Is(err, client.ErrUnreachable) {
		t.Fatalf("stranger → rtsp: err = %v, want ErrUnreachable", err)
	}
	// Through a forwarded port as well: the stranger's connection is closed.
	// (The reset may come so fast that the dial itself reports it.)
	conn, err := net.Dial("tcp", Forward(t, stranger, d.ID(), "rtsp"))
	switch {
	case err == nil:
		conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		if n, err := conn.Read(make([]byte, 1)); n != 0 || err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("stranger's forwarded connection read %d bytes, %v", n, err)
		}
		conn.Close()
	case !errors.Is(err, syscall.ECONNRESET):
		t.Fatal(err)
	}

	if n := rtsp.Accepted.Load() + admin.Accepted.Load(); n != 0 {
		t.Fatalf("services accepted %d connections from refused clients", n)
	}
	// The granted service works, and is dialed exactly once.
	tun, err := c.Dial(ctx, d.ID(), "rtsp")
	if err != nil {
		t.Fatal(err)
	}
	tun.Close()
	// The device's dial completes before the server's Accept returns.
	for deadline := time.Now().Add(2 * time.Second); rtsp.Accepted.Load() == 0 && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond)
	}
	if n := rtsp.Accepted.Load(); n != 1 {
		t.Fatalf("rtsp accepted %d connections, want 1", n)
	}
}

func TestServiceUnreachable(t *testing.T) {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := ln.Addr().String()
	ln.Close()
	_, d, c := setup(t, map[string]string{"cam": dead})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := c.Dial(ctx, d.ID(), "cam")
	if !errors.Is(err, session.ErrServiceUnreachable) || !strings.Contains(err.Error(), "refused") {
		t.Fatalf("err = %v, want ErrServiceUnreachable with the dial error", err)
	}

	// The service comes up (as after a restart): the next tunnel works,
	// with nothing restarted on the device or the client.
	srv, err := StartServerAt(t, dead, Echo)
	if err != nil {
		t.Skipf("the service's port was taken meanwhile: %v", err)
	}
	if err := echoOnce(t, c, d.ID(), "cam"); err != nil {
		t.Fatalf("after the service came up: %v", err)
	}
	// And down again: refused again, and the session is still there.
	srv.Close()
	if _, err := c.Dial(ctx, d.ID(), "cam"); !errors.Is(err, session.ErrServiceUnreachable) {
		t.Fatalf("after the service went down again: %v", err)
	}
}

// window returns whether any 32-byte window of payload occurs in data. Any
// such window contains a 16-byte block of payload starting at a multiple of
// 16, so only those blocks are indexed, then each hit is checked in full.
func window(payload, data []byte) bool {
	const w, block = 32, 16
	idx := make(map[[block]byte][]int)
	for i := 0; i+block <= len(payload); i += block {
		k := [block]byte(payload[i : i+block])
		idx[k] = append(idx[k], i)
	}
	for j := 0; j+block <= len(data); j++ {
		for _, i := range idx[[block]byte(data[j:j+block])] {
			// payload[i:i+16] == data[j:j+16]; try every 32-byte window
			// of payload that contains this block.
			for s := max(0, i-(w-block)); s <= i && s+w <= len(payload); s++ {
				d := j - (i - s)
				if d >= 0 && d+w <= len(data) && bytes.Equal(payload[s:s+w], data[d:d+w]) {
					return true
				}
			}
		}
	}
	return false
}

func TestWindowSearch(t *testing.T) {
	payload := make([]byte, 4096)
	rand.NewChaCha8([32]byte{9}).Read(payload)
	noise := make([]byte, 10000)
	rand.NewChaCha8([32]byte{10}).Read(noise)
	if window(payload, noise) {
		t.Fatal("found payload in noise")
	}
	for _, off := range []int{0, 1, 15, 17, 1000, 4096 - 32} {
		data := append(append(bytes.Clone(noise[:333]), payload[off:off+32]...), noise[333:]...)
		if !window(payload, data) {
			t.Fatalf("missed the window at payload offset %d", off)
		}
		data = append(append(bytes.Clone(noise[:333]), payload[off:off+31]...), noise[333:]...)
		if window(payload, data) {
			t.Fatalf("found a 31-byte piece at offset %d", off)
		}
	}
}

// recorder keeps every byte a connection reads and writes.
type recorder struct {
	net.Conn
	mu  *sync.Mutex
	buf *bytes.Buffer
}

func (r recorder) Read(p []byte) (int, error) {
	n, err := r.Conn.Read(p)
	r.mu.Lock()
	r.buf.Write(p[:n])
	r.mu.Unlock()
	return n, err
}

// ConnectionState exposes the TLS state the relay binds its handshake to.
func (r recorder) ConnectionState() tls.ConnectionState {
	return r.Conn.(*tls.Conn).ConnectionState()
}

func (r recorder) Write(p []byte) (int, error) {
	r.mu.Lock()
	r.buf.Write(p)
	r.mu.Unlock()
	return r.Conn.Write(p)
}

// TestRelayCannotRead records, in the clear (after TLS), everything the
// relay receives and sends while a known 1 MiB payload crosses a tunnel
// each way, and finds no 32-byte window of it.
func TestRelayCannotRead(t *testing.T) {
	var mu sync.Mutex
	var seen bytes.Buffer
	r := NewRelay(t)
	r.Wrap = func(c net.Conn) net.Conn { return recorder{Conn: c, mu: &mu, buf: &seen} }
	r.Start()

	payload := make([]byte, 1<<20)
	rand.NewChaCha8([32]byte{42}).Read(payload)
	srv := StartServer(t, Echo)
	cid := NewIdentity(t)
	d := StartDevice(t, r, device.Config{
		Services: map[string]string{"echo": srv.Addr},
		Clients:  map[identity.ID][]string{cid.ID(): {"echo"}},
	})
	c := StartClient(t, r, cid)
	conn, err := net.Dial("tcp", Forward(t, c, d.ID(), "echo"))
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		conn.Write(payload)
		conn.(*net.TCPConn).CloseWrite()
	}()
	back, err := io.ReadAll(conn)
	conn.Close()
	if err != nil || !bytes.Equal(back, payload) {
		t.Fatalf("echo returned %d bytes, %v", len(back), err)
	}
	mu.Lock()
	data := bytes.Clone(seen.Bytes())
	mu.Unlock()
	if len(data) < 2*len(payload) {
		t.Fatalf("recorded only %d bytes: the instrument missed the traffic", len(data))
	}
	if window(payload, data) {
		t.Fatal("the relay saw plaintext of the tunnel")
	}
	t.Logf("relay handled %d bytes in the clear; none of the payload", len(data))
}

// TestWrongDeviceKey: the client pins device X, but the agent answering for
// X (as a lying relay would arrange) proves key K. The handshake fails with
// a key mismatch and the service sees nothing.
func TestWrongDeviceKey(t *testing.T) {
	srv := StartServer(t, Echo)
	r := StartRelay(t)
	cid := NewIdentity(t)
	pinned := NewIdentity(t) // the ID the client pins
	actual := NewIdentity(t) // the key the impostor proves

	// An impostor attached to the relay as the pinned ID that runs its E2E
	// sessions with another key.
	pc := ListenPaths(t, r, paths.Config{Identity: pinned, Role: relayproto.RoleDevice,
		Access: func() ([]identity.ID, [][32]byte) { return []identity.ID{cid.ID()}, nil }})
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
	go func() {
		for {
			s, err := ln.Accept(context.Background())
			if err != nil {
				return
			}
			go func() {
				for {
					in, err := s.AcceptTunnel(context.Background())
					if err != nil {
						return
					}
					net.Dial("tcp", srv.Addr) // would be a breach
					in.Accept()
				}
			}()
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := pc.WaitAttached(ctx); err != nil {
		t.Fatal(err)
	}
	c := StartClient(t, r, cid)
	_, err = c.Dial(ctx, pinned.ID(), "echo")
	var km *identity.KeyMismatchError
	if !errors.As(err, &km) {
		t.Fatalf("err = %v, want a key mismatch", err)
	}
	if km.Expected != pinned.ID() || km.Got != actual.ID() {
		t.Fatalf("mismatch says expected %s got %s", km.Expected.Short(), km.Got.Short())
	}
	if !strings.Contains(err.Error(), "key mismatch") {
		t.Fatalf("message %q", err)
	}
	if n := srv.Accepted.Load(); n != 0 {
		t.Fatalf("service accepted %d connections", n)
	}
}

// TestWrongRelayKey: an agent pinning another relay ID refuses the relay.
func TestWrongRelayKey(t *testing.T) {
	r := StartRelay(t)
	wrong := NewIdentity(t).ID()
	c := NewClient(t, client.Config{Relay: relaylink.RelayConfig{Addr: r.Addr, ID: wrong}})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := c.WaitAttached(ctx)
	var km *identity.KeyMismatchError
	if !errors.As(err, &km) || km.Expected != wrong || km.Got != r.Identity.ID() || km.Peer != "relay" {
		t.Fatalf("err = %v, want a relay key mismatch", err)
	}
	if st := r.Server().Stats(); st.Clients != 0 || st.PacketsForwarded != 0 {
		t.Fatalf("relay attached the agent anyway: %+v", st)
	}
	// An agent with no pin at all does not trust a self-signed relay.
	c2 := NewClient(t, client.Config{Relay: relaylink.RelayConfig{Addr: r.Addr}})
	err = c2.WaitAttached(ctx)
	var untrusted *relaylink.UntrustedRelayError
	if !errors.As(err, &untrusted) || !strings.Contains(err.Error(), "relay-id") {
		t.Fatalf("unpinned self-signed relay: err = %v", err)
	}
}

// TestDeviceOffline: a client hears quickly that a device is offline, and
// since when, if the device allowed it; a client the device did not allow
// hears the same whether the device is attached or not, and nothing of
// when it was last seen.
func TestDeviceOffline(t *testing.T) {
	r := StartRelay(t)
	c := StartClient(t, r, nil)
	stranger := StartClient(t, r, nil)
	absent := NewIdentity(t).ID()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	_, err := c.Dial(ctx, absent, "http")
	took := time.Since(start)
	if !errors.Is(err, client.ErrUnreachable) || !strings.Contains(err.Error(), "offline") {
		t.Fatalf("a device that never was: err = %v, want unreachable", err)
	}
	if took > 2*time.Second {
		t.Fatalf("reported after %v, want under 2s", took)
	}
	t.Logf("unreachable after %v: %v", took, err)

	// A device that detaches: the relay remembers when it saw it, and tells
	// its clients.
	d := StartDevice(t, r, device.Config{Services: map[string]string{"http": "127.0.0.1:1"},
		Clients: map[identity.ID][]string{c.ID(): {"http"}}})
	_, online := stranger.Dial(ctx, d.ID(), "http")
	d.Close()
	for deadline := time.Now().Add(5 * time.Second); r.Server().Stats().Devices != 0; {
		if time.Now().After(deadline) {
			t.Fatal("relay still lists the closed device")
		}
		time.Sleep(10 * time.Millisecond)
	}
	start = time.Now()
	_, err = c.Dial(ctx, d.ID(), "http")
	if !errors.Is(err, client.ErrOffline) || !strings.Contains(err.Error(), "last seen") || time.Since(start) > 2*time.Second {
		t.Fatalf("after detach: err = %v after %v", err, time.Since(start))
	}
	_, offline := stranger.Dial(ctx, d.ID(), "http")
	if !errors.Is(online, client.ErrUnreachable) || online.Error() != offline.Error() {
		t.Fatalf("a stranger hears %q while the device is attached and %q after, want the same", online, offline)
	}
}

// TestDeviceGoesOffline: a client with a live session to a device that
// then stops learns it is offline on its next tunnel, quickly.
func TestDeviceGoesOffline(t *testing.T) {
	srv := StartServer(t, Echo)
	r, d, c := setup(t, map[string]string{"echo": srv.Addr})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	tun, err := c.Dial(ctx, d.ID(), "echo")
	if err != nil {
		t.Fatal(err)
	}
	tun.Close()
	d.Close()
	for r.Server().Stats().Devices != 0 {
		time.Sleep(10 * time.Millisecond)
	}
	// Until the client's session says something, it cannot know; give the
	// first attempt the benefit of the doubt but require the answer soon.
	start := time.Now()
	for {
		_, err = c.Dial(ctx, d.ID(), "echo")
		if errors.Is(err, client.ErrOffline) {
			break
		}
		if err == nil || time.Since(start) > 15*time.Second {
			t.Fatalf("after the device stopped: err = %v after %v", err, time.Since(start))
		}
	}
	t.Logf("offline noticed after %v", time.Since(start))
}

// TestRelayRestart stops the relay process's server and starts it again on
// the same port: the device and client reattach on their own and a new
// tunnel works within 10s.
func TestRelayRestart(t *testing.T) {
	srv := StartServer(t, Echo)
	r, d, c := setup(t, map[string]string{"echo": srv.Addr})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	roundTrip := func() error {
		tctx, tcancel := context.WithTimeout(ctx, 2*time.Second)
		defer tcancel()
		tun, err := c.Dial(tctx, d.ID(), "echo")
		if err != nil {
			return err
		}
		defer tun.Close()
		tun.SetDeadline(time.Now().Add(2 * time.Second))
		if _, err := tun.Write([]byte("ping")); err != nil {
			return err
		}
		b := make([]byte, 4)
		_, err = io.ReadFull(tun, b)
		return err
	}
	if err := roundTrip(); err != nil {
		t.Fatal(err)
	}
	r.Stop()
	time.Sleep(time.Second)
	r.Start()
	start := time.Now()
	for {
		err := roundTrip()
		if err == nil {
			break
		}
		if time.Since(start) > 10*time.Second {
			t.Fatalf("no working tunnel 10s after the relay restarted: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("tunnel works %v after the relay restarted", time.Since(start).Round(time.Millisecond))
}

// TestSlowReader: one tunnel whose reader has stopped does not stall a
// second tunnel to the same device. The second tunnel must keep at least
// half the rate a tunnel has alone (measured in the same run) and, without
// the race detector, at least 10 MiB/s.
func TestSlowReader(t *testing.T) {
	const size = 32 << 20
	srv := StartServer(t, func(c *net.TCPConn) {
		io.Copy(c, randomStream(7, 1<<40)) // endless, until the reader stops taking it
	})
	_, d, c := setup(t, map[string]string{"stream": srv.Addr})
	addr := Forward(t, c, d.ID(), "stream")
	rate := func(size int64) float64 {
		t.Helper()
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		start := time.Now()
		n, err := io.CopyN(io.Discard, conn, size)
		if err != nil {
			t.Fatalf("tunnel moved %d bytes: %v", n, err)
		}
		return float64(n) / time.Since(start).Seconds() / (1 << 20)
	}
	rate(size / 4) // let the session's congestion window open
	alone := rate(size)

	stalled, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer stalled.Close()
	// Let the stalled tunnel fill every buffer on its way.
	io.ReadFull(stalled, make([]byte, 1))
	time.Sleep(time.Second)

	beside := rate(size)
	t.Logf("a tunnel alone: %.1f MiB/s; beside a stalled one: %.1f MiB/s", alone, beside)
	if beside < alone/2 {
		t.Fatalf("a stalled tunnel slowed another from %.1f to %.1f MiB/s", alone, beside)
	}
	if !israce.Enabled && beside < 10 {
		t.Fatalf("second tunnel moved %.1f MiB/s beside a stalled one, want at least 10", beside)
	}
}

// TestShutdownLeavesNothing closes relay, device and client explicitly while
// tunnels are open and checks no goroutine outlives them.
func TestShutdownLeavesNothing(t *testing.T) {
	defer goleak.VerifyNone(t)
	srv := StartServer(t, Echo)
	r := StartRelay(t)
	cid := NewIdentity(t)
	d := StartDevice(t, r, device.Config{
		Services: map[string]string{"echo": srv.Addr},
		Clients:  map[identity.ID][]string{cid.ID(): {"echo"}},
	})
	c := StartClient(t, r, cid)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var open []net.Conn
	for range 5 {
		tun, err := c.Dial(ctx, d.ID(), "echo")
		if err != nil {
			t.Fatal(err)
		}
		open = append(open, tun)
	}
	tun := open[0]
	tun.Write([]byte("hi"))
	io.ReadFull(tun, make([]byte, 2))

	c.Close()
	d.Close()
	r.Stop()
	srv.Close()
	for _, tun := range open {
		tun.Close()
	}
}

// vanishingDialer dials the relay until Vanish is called; then it cuts
// every connection it made and fails every new dial, as if the device lost
// power.
type vanishingDialer struct {
	mu    sync.Mutex
	gone  bool
	conns []net.Conn
}

func (v *vanishingDialer) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.gone {
		return nil, errors.New("powered off")
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, network, addr)
	if err == nil {
		v.conns = append(v.conns, c)
	}
	return c, err
}

func (v *vanishingDialer) Vanish() {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.gone = true
	for _, c := range v.conns {
		c.Close()
	}
}

// TestDeviceVanishes: a device disappears without a word (no session close
// reaches the client). The client's next tunnel fails with "offline" within
// 2s instead of waiting for a timeout.
func TestDeviceVanishes(t *testing.T) {
	srv := StartServer(t, Echo)
	r := StartRelay(t)
	cid := NewIdentity(t)
	var v vanishingDialer
	d := StartDevice(t, r, device.Config{
		Services:  map[string]string{"echo": srv.Addr},
		Clients:   map[identity.ID][]string{cid.ID(): {"echo"}},
		DialRelay: v.Dial,
	})
	c := StartClient(t, r, cid)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	tun, err := c.Dial(ctx, d.ID(), "echo")
	if err != nil {
		t.Fatal(err)
	}
	tun.Close()
	v.Vanish()
	for r.Server().Stats().Devices != 0 {
		time.Sleep(10 * time.Millisecond)
	}
	start := time.Now()
	_, err = c.Dial(ctx, d.ID(), "echo")
	took := time.Since(start)
	if !errors.Is(err, client.ErrOffline) || took > 2*time.Second {
		t.Fatalf("after the device vanished: err = %v after %v, want offline within 2s", err, took)
	}
	t.Logf("offline after %v: %v", took, err)
}

// TestPipelinedRefusal: bytes sent with the request, before the device's
// answer, are never delivered if the device refuses, and the writer learns
// the refusal itself, not just a broken stream.
func TestPipelinedRefusal(t *testing.T) {
	admin := StartServer(t, Echo)
	r := StartRelay(t)
	cid := NewIdentity(t)
	d := StartDevice(t, r, device.Config{
		Services: map[string]string{"admin": admin.Addr, "rtsp": "127.0.0.1:1"},
		Clients:  map[identity.ID][]string{cid.ID(): {"rtsp"}},
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s := rawSession(t, r, cid, d, nil)
	tun, err := s.StartTunnel(ctx, "admin")
	if err != nil {
		t.Fatal(err)
	}
	chunk := make([]byte, 64<<10)
	for i := 0; ; i++ {
		if _, err = tun.Write(chunk); err != nil {
			break
		}
		if i > 1000 {
			t.Fatal("64 MiB written to a refused tunnel without an error")
		}
	}
	if !errors.Is(err, session.ErrNotAuthorized) {
		t.Fatalf("write: err = %v, want the refusal", err)
	}
	if _, err := tun.Read(make([]byte, 1)); !errors.Is(err, session.ErrNotAuthorized) {
		t.Fatalf("read: err = %v, want the refusal", err)
	}
	if n := admin.Accepted.Load(); n != 0 {
		t.Fatalf("the refused service accepted %d connections", n)
	}
}

// TestTunnelRateLimit: a client opening tunnels faster than the device's
// limit gets typed rate-limit refusals, while another client's tunnels, to
// the same device and to another one, keep working; once the flood stops,
// the first client may open tunnels again.
func TestTunnelRateLimit(t *testing.T) {
	srv := StartServer(t, Echo)
	r := StartRelay(t)
	flooder, other := NewIdentity(t), NewIdentity(t)
	clients := map[identity.ID][]string{flooder.ID(): {"echo"}, other.ID(): {"echo"}}
	a := StartDevice(t, r, device.Config{Services: map[string]string{"echo": srv.Addr}, Clients: clients,
		TunnelRate: 20, TunnelBurst: 10})
	b := StartDevice(t, r, device.Config{Services: map[string]string{"echo": srv.Addr}, Clients: clients})
	fc, oc := StartClient(t, r, flooder), StartClient(t, r, other)

	stop := make(chan struct{})
	var limited, opened atomic.Int64
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				tun, err := fc.Dial(ctx10(t), a.ID(), "echo")
				switch {
				case err == nil:
					opened.Add(1)
					tun.Close()
				case errors.Is(err, session.ErrRateLimited):
					limited.Add(1)
					if !strings.Contains(err.Error(), "too many tunnels too fast") {
						t.Errorf("refusal says %q", err)
					}
				default:
					t.Errorf("flooder: %v", err)
					return
				}
			}
		})
	}
	// Meanwhile the other client's tunnels, to both devices, work (it
	// opens fewer than 20 a second itself).
	var worst time.Duration
	for range 15 {
		for _, dev := range []identity.ID{a.ID(), b.ID()} {
			start := time.Now()
			if err := echoOnce(t, oc, dev, "echo"); err != nil {
				t.Fatalf("the other client, during the flood: %v", err)
			}
			worst = max(worst, time.Since(start))
		}
		time.Sleep(60 * time.Millisecond)
	}
	close(stop)
	wg.Wait()
	t.Logf("flooder: %d opened, %d refused; the other client's slowest echo %v", opened.Load(), limited.Load(), worst)
	if limited.Load() == 0 {
		t.Fatal("no open was rate limited")
	}
	// 10 at once, then 20 a second, over about 1.5s: well under 100.
	if n := opened.Load(); n > 100 {
		t.Fatalf("%d opens let through", n)
	}
	time.Sleep(600 * time.Millisecond) // tokens come back
	if err := echoOnce(t, fc, a.ID(), "echo"); err != nil {
		t.Fatalf("after the flood: %v", err)
	}
}
