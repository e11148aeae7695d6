package device_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/burrow-tunnel/burrow/client"
	"github.com/burrow-tunnel/burrow/device"
	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/internal/testing/tunneltest"
	"github.com/burrow-tunnel/burrow/session"
)

// handlerSetup starts a relay, a device with cfg (its Clients granting
// every service to the client returned, unless cfg has Clients) and a
// client.
func handlerSetup(t *testing.T, cfg device.Config) (*device.Device, *client.Client) {
	t.Helper()
	r := tunneltest.StartRelay(t)
	cid := tunneltest.NewIdentity(t)
	if cfg.Clients == nil {
		cfg.Clients = map[identity.ID][]string{cid.ID(): {device.AllServices}}
	}
	d := tunneltest.StartDevice(t, r, cfg)
	return d, tunneltest.StartClient(t, r, cid)
}

func ctx10(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// A half-closer is a connection whose write direction closes alone.
type halfCloser interface {
	net.Conn
	CloseWrite() error
}

// TestHandlerConnHalfClose: a func(net.Conn) service half-closes first
// and still reads what the client sends after; the client half-closes
// and still reads; the tunnel's bytes are counted as an address
// service's are, and the handler learns the client's ID.
func TestHandlerConnHalfClose(t *testing.T) {
	got := make(chan string, 1)
	who := make(chan identity.ID, 1)
	d, c := handlerSetup(t, device.Config{Handlers: map[string]device.Handler{
		"greet": device.ServeConn(func(conn net.Conn) {
			id, _ := device.TunnelClient(conn)
			who <- id
			io.WriteString(conn, "hello")
			if err := conn.(halfCloser).CloseWrite(); err != nil {
				t.Errorf("CloseWrite: %v", err)
			}
			b, err := io.ReadAll(conn) // until the client half-closes
			if err != nil {
				t.Errorf("handler read: %v", err)
			}
			got <- string(b)
		}),
	}})
	tun, err := c.Dial(ctx10(t), d.ID(), "greet")
	if err != nil {
		t.Fatal(err)
	}
	defer tun.Close()
	tun.SetDeadline(time.Now().Add(10 * time.Second))
	b, err := io.ReadAll(tun) // EOF: the handler half-closed
	if err != nil || string(b) != "hello" {
		t.Fatalf("client read %q, %v; want hello", b, err)
	}
	if _, err := io.WriteString(tun, "after your EOF"); err != nil {
		t.Fatalf("client write after the handler's half-close: %v", err)
	}
	if err := tun.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if s := <-got; s != "after your EOF" {
		t.Fatalf("handler read %q", s)
	}
	if id := <-who; id != c.ID() {
		t.Fatalf("TunnelClient = %s, want %s", id.Short(), c.ID().Short())
	}
	// Counted once the device has closed the tunnel, as the handler
	// returned.
	waitFor(t, "the tunnel's bytes counted", func() bool {
		m := d.Metrics()
		return m.BytesToService == uint64(len("after your EOF")) && m.BytesFromService == uint64(len("hello")) &&
			tunnelCount(m, "greet", device.TunnelOK) == 1
	})
}

// TestHandlerHTTP: an http.Handler service serves two requests on one
// tunnel (keep-alive) and two at once on two tunnels.
func TestHandlerHTTP(t *testing.T) {
	var arrived sync.WaitGroup
	arrived.Add(2)
	d, c := handlerSetup(t, device.Config{Handlers: map[string]device.Handler{
		"admin": device.ServeHTTP(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/both" {
				// Answers only once two requests are in at once.
				arrived.Done()
				arrived.Wait()
			}
			id, _ := device.RequestClient(r)
			fmt.Fprintf(w, "%s for %s", r.URL.Path, id.Short())
		})),
	}})
	var dials atomic.Int64
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			dials.Add(1)
			return c.Dial(ctx, d.ID(), "admin")
		},
	}}
	defer hc.CloseIdleConnections()
	get := func(path string) error {
		resp, err := hc.Get("http://admin" + path)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			return err
		}
		if want := path + " for " + c.ID().Short(); string(b) != want {
			return fmt.Errorf("GET %s: %q, want %q", path, b, want)
		}
		return nil
	}
	for _, p := range []string{"/one", "/two"} {
		if err := get(p); err != nil {
			t.Fatal(err)
		}
	}
	if n := dials.Load(); n != 1 {
		t.Fatalf("two requests one after the other took %d tunnels, want 1 (keep-alive)", n)
	}
	errs := make(chan error, 2)
	for range 2 {
		go func() { errs <- get("/both") }()
	}
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if n := dials.Load(); n != 2 {
		t.Fatalf("%d tunnels in all, want 2: the concurrent request took the idle one and a new one", n)
	}
	if n := d.Status().Sessions[0].Total; n != 2 {
		t.Fatalf("the session's tunnels: %d, want 2", n)
	}
}

// TestHandlerRoles: roles and configured clients grant in-process
// services as they grant address services, and an unknown service's
// refusal lists them.
func TestHandlerRoles(t *testing.T) {
	echo := tunneltest.StartServer(t, tunneltest.Echo)
	r := tunneltest.StartRelay(t)
	viewer, admin := tunneltest.NewIdentity(t), tunneltest.NewIdentity(t)
	hello := device.ServeConn(func(conn net.Conn) { io.WriteString(conn, "hi") })
	d := tunneltest.StartDevice(t, r, device.Config{
		Services: map[string]string{"echo": echo.Addr},
		Handlers: map[string]device.Handler{"hello": hello, "secret": hello},
		Roles:    map[string][]string{"guest": {"hello"}},
		Clients:  map[identity.ID][]string{viewer.ID(): {"hello", "echo"}, admin.ID(): {device.AllServices}},
		StateDir: t.TempDir(),
	})
	cv, ca := tunneltest.StartClient(t, r, viewer), tunneltest.StartClient(t, r, admin)
	guest := tunneltest.StartClient(t, r, nil)
	inv, err := d.Invite("guest", time.Minute, "guest")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := guest.Pair(ctx10(t), inv); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		c       *client.Client
		service string
		want    error // nil: served
		allowed []string
	}{
		{cv, "hello", nil, nil},
		{cv, "secret", session.ErrNotAuthorized, nil},
		{cv, "nope", session.ErrUnknownService, []string{"echo", "hello"}},
		{guest, "hello", nil, nil},
		{guest, "secret", session.ErrNotAuthorized, nil},
		{ca, "secret", nil, nil},
		{ca, "nope", session.ErrUnknownService, []string{"echo", "hello", "secret"}},
	}
	for _, tc := range tests {
		tun, err := tc.c.Dial(ctx10(t), d.ID(), tc.service)
		if tc.want == nil {
			if err != nil {
				t.Fatalf("%s: %v", tc.service, err)
			}
			b, err := io.ReadAll(tun)
			tun.Close()
			if err != nil || string(b) != "hi" {
				t.Fatalf("%s: read %q, %v", tc.service, b, err)
			}
			continue
		}
		refused, ok := errors.AsType[*session.RefusedError](err)
		if !errors.Is(err, tc.want) || !ok || !slices.Equal(refused.Reply.Allowed, tc.allowed) {
			t.Fatalf("%s: err = %v, want %v listing %v", tc.service, err, tc.want, tc.allowed)
		}
	}
	m := d.Metrics()
	if n := tunnelCount(m, "secret", device.TunnelNotAuthorized); n != 2 {
		t.Fatalf("secret's not_authorized count: %d, want 2", n)
	}
	// A reload keeps the handlers: roles may name them, services may
	// not take their names.
	if _, err := d.Reload(device.Policy{Services: map[string]string{"echo": echo.Addr},
		Roles: map[string][]string{"guest": {"secret"}}}); err != nil {
		t.Fatalf("reload naming a handler in a role: %v", err)
	}
	if err := echoOnceHi(guest, d.ID(), "secret"); err != nil {
		t.Fatalf("guest after the reload granted secret: %v", err)
	}
	if _, err := d.Reload(device.Policy{Services: map[string]string{"hello": echo.Addr}}); err == nil {
		t.Fatal("a reload gave a handler's name to an address")
	}
}

func echoOnceHi(c *client.Client, dev identity.ID, service string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tun, err := c.Dial(ctx, dev, service)
	if err != nil {
		return err
	}
	defer tun.Close()
	b, err := io.ReadAll(tun)
	if err == nil && string(b) != "hi" {
		err = fmt.Errorf("read %q", b)
	}
	return err
}

// TestHandlerPanic: a handler that panics aborts its tunnel; the device
// goes on serving.
func TestHandlerPanic(t *testing.T) {
	d, c := handlerSetup(t, device.Config{Handlers: map[string]device.Handler{
		"fragile": device.ServeConn(func(conn net.Conn) {
			b := make([]byte, 4)
			if _, err := io.ReadFull(conn, b); err != nil {
				return
			}
			if string(b) == "boom" {
				panic("boom")
			}
			conn.Write(b)
		}),
	}})
	try := func(msg string) ([]byte, error) {
		tun, err := c.Dial(ctx10(t), d.ID(), "fragile")
		if err != nil {
			return nil, err
		}
		defer tun.Close()
		tun.SetDeadline(time.Now().Add(10 * time.Second))
		io.WriteString(tun, msg)
		return io.ReadAll(tun)
	}
	if b, err := try("boom"); !session.IsAbort(err) {
		t.Fatalf("tunnel of the panicking handler: read %q, %v; want an abort", b, err)
	}
	if b, err := try("fine"); err != nil || string(b) != "fine" {
		t.Fatalf("after the panic: %q, %v", b, err)
	}
}

// TestHandlerCloseWaits: Device.Close returns once the handlers have.
func TestHandlerCloseWaits(t *testing.T) {
	var returned atomic.Bool
	started := make(chan struct{})
	d, c := handlerSetup(t, device.Config{Handlers: map[string]device.Handler{
		"block": device.ServeConn(func(conn net.Conn) {
			defer returned.Store(true)
			close(started)
			io.Copy(io.Discard, conn) // until the tunnel ends
			time.Sleep(50 * time.Millisecond)
		}),
		"page": device.ServeHTTP(http.NotFoundHandler()),
	}})
	tun, err := c.Dial(ctx10(t), d.ID(), "block")
	if err != nil {
		t.Fatal(err)
	}
	defer tun.Close()
	<-started
	d.Close()
	if !returned.Load() {
		t.Fatal("Device.Close returned before the handler did")
	}
}

func tunnelCount(m device.Metrics, service string, r device.TunnelResult) uint64 {
	for _, tc := range m.Tunnels {
		if tc.Service == service && tc.Result == r {
			return tc.Count
		}
	}
	return 0
}

// waitFor polls cond until it holds, or fails the test after 10s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
