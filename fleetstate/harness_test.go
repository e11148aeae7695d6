package fleetstate

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/relay"
	"github.com/burrow-tunnel/burrow/relaylink"
	"github.com/burrow-tunnel/burrow/relayproto"
)

// testLogger writes to t.Log.
func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tlogWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tlogWriter struct{ t testing.TB }

func (w tlogWriter) Write(p []byte) (int, error) {
	w.t.Log(string(bytes.TrimRight(p, "\n")))
	return len(p), nil
}

// connectNATS connects to url as a relay does: reconnecting without end.
func connectNATS(t testing.TB, url string) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(url, nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond), nats.ReconnectJitter(0, 0))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// openState opens a State on its own connection to url.
func openState(t testing.TB, url string, timeout time.Duration) *State {
	t.Helper()
	st, err := Open(t.Context(), Config{Conn: connectNATS(t, url), Timeout: timeout, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// A fleetRelay is a relay of the fleet on loopback: its server, its state
// in NATS, and its admin API.
type fleetRelay struct {
	t     testing.TB
	id    *identity.Identity
	srv   *relay.Server
	state *State
	addr  string
	admin http.Handler
}

// startRelay starts a relay whose state is in NATS at url, as burrow
// relay --nats does.
func startRelay(t testing.TB, url string) *fleetRelay {
	t.Helper()
	id, err := identity.Generate()
	if err != nil {
		t.Fatal(err)
	}
	st := openState(t, url, 0)
	srv, err := relay.New(relay.Config{Identity: id, AllowDevice: st.Enrolled, Enroll: st.Enroll, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	st.OnRemove(srv.Disconnect)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(ln)
	}()
	t.Cleanup(func() {
		srv.Close()
		<-done
	})
	return &fleetRelay{t: t, id: id, srv: srv, state: st, addr: ln.Addr().String(), admin: relay.AdminHandler(srv, st, nil)}
}

// call calls the relay's admin API, as burrow relay token create and
// burrow relay devices do through its socket; it returns the status and
// the body.
func (r *fleetRelay) call(method, path string, in any) (int, []byte) {
	r.t.Helper()
	var body io.Reader
	if in != nil {
		b, _ := json.Marshal(in)
		body = bytes.NewReader(b)
	}
	req := httptest.NewRequest(method, path, body)
	req.Header.Set("Content-Type", "application/json")
	rec := httptest.NewRecorder()
	r.admin.ServeHTTP(rec, req)
	return rec.Code, rec.Body.Bytes()
}

// createToken creates a token through the relay's admin API.
func (r *fleetRelay) createToken(uses int) string {
	r.t.Helper()
	code, body := r.call("POST", "/tokens", relay.TokenRequest{Uses: uses, TTL: "1h"})
	if code != http.StatusOK {
		r.t.Fatalf("create token: %d %s", code, body)
	}
	var out struct{ Token string }
	if err := json.Unmarshal(body, &out); err != nil {
		r.t.Fatal(err)
	}
	return out.Token
}

// dial attaches the device dev to the relay, with token if not empty.
func (r *fleetRelay) dial(dev *identity.Identity, token string) (*relaylink.Link, error) {
	return relaylink.Dial(r.t.Context(), relaylink.Config{
		Relay:       relaylink.RelayConfig{Addr: r.addr, ID: r.id.ID()},
		Identity:    dev,
		Role:        relayproto.RoleDevice,
		Instance:    1,
		EnrollToken: token,
	}, relaylink.State{})
}

// waitGoAway reads l until the relay sends it away, and returns the
// go-away and when it came.
func waitGoAway(t testing.TB, l *relaylink.Link) (relayproto.GoAway, time.Time) {
	t.Helper()
	for {
		m, err := l.Read()
		if err != nil {
			t.Fatalf("link ended without a go-away: %v", err)
		}
		if ga, ok := m.(relayproto.GoAway); ok {
			return ga, time.Now()
		}
		if p, ok := m.(*relaylink.Packet); ok {
			p.Release()
		}
	}
}

// eventually waits up to 5s for cond.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not in 5s: %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func newIdentity(t testing.TB) *identity.Identity {
	t.Helper()
	id, err := identity.Generate()
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// refusal returns the relay's refusal in err, or fails the test.
func refusal(t testing.TB, err error) *relaylink.AttachRefusedError {
	t.Helper()
	var ref *relaylink.AttachRefusedError
	if !errors.As(err, &ref) {
		t.Fatalf("want a refusal, got %v", err)
	}
	return ref
}

// A proxy forwards TCP connections to a NATS server, and can cut them all
// and refuse new ones (a network partition of one relay) and heal.
type proxy struct {
	t      testing.TB
	target string
	addr   string

	mu    sync.Mutex
	ln    net.Listener
	conns []net.Conn
}

func startProxy(t testing.TB, target string) *proxy {
	t.Helper()
	p := &proxy{t: t, target: target, addr: "127.0.0.1:0"}
	p.heal()
	p.addr = p.ln.Addr().String()
	t.Cleanup(p.cut)
	return p
}

// URL is the NATS URL through the proxy.
func (p *proxy) URL() string { return "nats://" + p.addr }

// heal listens again, on the same port.
func (p *proxy) heal() {
	p.t.Helper()
	ln, err := net.Listen("tcp", p.addr)
	if err != nil {
		p.t.Fatal(err)
	}
	p.mu.Lock()
	p.ln = ln
	p.mu.Unlock()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", p.target)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, c, u)
			p.mu.Unlock()
			go func() { io.Copy(u, c); u.Close() }()
			go func() { io.Copy(c, u); c.Close() }()
		}
	}()
}

// cut closes the listener and every connection.
func (p *proxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ln != nil {
		p.ln.Close()
		p.ln = nil
	}
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}
