package relaymetrics

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/goleak"

	"github.com/burrow-tunnel/burrow/device"
	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/internal/testing/promtest"
	"github.com/burrow-tunnel/burrow/internal/testing/tunneltest"
	"github.com/burrow-tunnel/burrow/relay"
	"github.com/burrow-tunnel/burrow/relaylink"
	"github.com/burrow-tunnel/burrow/relayproto"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var value = promtest.Value

func scrape(t *testing.T, url string) map[string]*dto.MetricFamily { return promtest.Scrape(t, url) }

var get = promtest.Get

// waitStats waits until ok holds of srv's counters.
func waitStats(t *testing.T, srv *relay.Server, what string, ok func(relay.Stats) bool) {
	t.Helper()
	for deadline := time.Now().Add(15 * time.Second); !ok(srv.Stats()); {
		if time.Now().After(deadline) {
			t.Fatalf("%s: stats %+v", what, srv.Stats())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestScrapeAfterTraffic: after real agents attached, were refused and
// enrolled, and bytes went through a tunnel, a scrape shows every counter
// moved, with HELP texts and names that pass Prometheus' lint.
func TestScrapeAfterTraffic(t *testing.T) {
	r := tunneltest.NewRelay(t)
	var mu sync.Mutex
	enrolled := map[identity.ID]bool{}
	r.Allow = func(id identity.ID) bool { mu.Lock(); defer mu.Unlock(); return enrolled[id] }
	r.Enroll = func(id identity.ID, token string) error {
		if token != "good" {
			return errors.New("unknown token")
		}
		mu.Lock()
		defer mu.Unlock()
		enrolled[id] = true
		return nil
	}
	r.Start()
	srv := r.Server()

	cid := tunneltest.NewIdentity(t)
	echo := tunneltest.StartServer(t, tunneltest.Echo)
	d := tunneltest.StartDevice(t, r, device.Config{
		EnrollToken: "good",
		Services:    map[string]string{"echo": echo.Addr},
		Clients:     map[identity.ID][]string{cid.ID(): {device.AllServices}},
	})
	c := tunneltest.StartClient(t, r, cid)
	conn, err := net.Dial("tcp", tunneltest.Forward(t, c, d.ID(), "echo"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	msg := bytes.Repeat([]byte("burrow "), 10_000)
	go conn.Write(msg)
	got := make([]byte, len(msg))
	conn.SetReadDeadline(time.Now().Add(20 * time.Second))
	if _, err := io.ReadFull(conn, got); err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("echo through the tunnel: %v", err)
	}

	tunneltest.NewDevice(t, r, device.Config{Services: map[string]string{"echo": echo.Addr}})                       // not enrolled, no token
	tunneltest.NewDevice(t, r, device.Config{Services: map[string]string{"echo": echo.Addr}, EnrollToken: "wrong"}) // a token the relay refuses
	if c, err := net.Dial("tcp", r.Addr); err == nil {                                                              // not TLS
		c.Write([]byte("GET / HTTP/1.1\r\n\r\n"))
		c.Close()
	}
	waitStats(t, srv, "refusals", func(st relay.Stats) bool {
		return st.EnrollFailed > 0 && st.Refusals[relay.RefusalKey{Role: 1, Code: 3}] >= 2 && st.HandshakeFailures[relay.HandshakeTLS] > 0
	})

	mux, err := Mux(Config{Server: srv, Version: "v1.2.3"})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(mux)
	defer hs.Close()
	mfs := scrape(t, hs.URL+"/metrics")

	for _, m := range []struct {
		name   string
		labels []string
		min    float64
	}{
		{"burrow_relay_info", []string{"version", "v1.2.3", "id", srv.ID().String()}, 1},
		{"burrow_relay_devices_attached", nil, 1},
		{"burrow_relay_clients_attached", nil, 1},
		{"burrow_relay_sessions", []string{"path", "relay"}, 1},
		{"burrow_relay_forwarded_packets_total", nil, 10},
		{"burrow_relay_forwarded_bytes_total", nil, float64(2 * len(msg))},
		{"burrow_relay_refusals_total", []string{"role", "device", "reason", "not_allowed"}, 2},
		{"burrow_relay_handshake_failures_total", []string{"reason", "tls"}, 1},
		{"burrow_relay_enrollments_total", []string{"result", "succeeded"}, 1},
		{"burrow_relay_enrollments_total", []string{"result", "failed"}, 1},
		{"burrow_relay_attaches_total", []string{"role", "device"}, 1},
		{"burrow_relay_attaches_total", []string{"role", "client"}, 1},
		{"go_goroutines", nil, 1},
	} {
		v, ok := value(mfs, m.name, m.labels...)
		if !ok || v < m.min {
			t.Errorf("%s%v = %v (present %v), want at least %v", m.name, m.labels, v, ok, m.min)
		}
	}
	// Present, at zero here.
	for _, m := range [][]string{
		{"burrow_relay_pending_connections"},
		{"burrow_relay_queue_dropped_packets_total"},
		{"burrow_relay_preauth_rejections_total", "reason", "per_ip"},
		{"burrow_relay_preauth_rejections_total", "reason", "global"},
		{"burrow_relay_reattaches_total", "role", "client"},
		{"burrow_relay_redirects_total"},
		{"burrow_relay_udp_datagrams_total", "result", "answered"},
		{"burrow_relay_udp_forwarded_packets_total"},
		{"burrow_relay_udp_forwarded_bytes_total"},
		{"burrow_relay_udp_dropped_total", "reason", "unbound"},
		{"burrow_relay_udp_dropped_total", "reason", "wrong_tag"},
		{"burrow_relay_udp_bindings"},
		{"burrow_relay_udp_bindings_confirmed"},
		{"burrow_relay_refusals_total", "role", "unknown", "reason", "auth"},
		{"burrow_relay_handshake_failures_total", "reason", "timeout"},
	} {
		if _, ok := value(mfs, m[0], m[1:]...); !ok {
			t.Errorf("%v missing", m)
		}
	}
	for name, mf := range mfs {
		if mf.GetHelp() == "" {
			t.Errorf("%s has no HELP", name)
		}
	}
	problems, err := testutil.CollectAndLint(NewCollector(srv, ""))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}
}

// TestHealth: /healthz answers while the relay serves; /readyz says why
// the relay is not ready: its state store, or a drain.
func TestHealth(t *testing.T) {
	r := tunneltest.NewRelay(t)
	r.DrainQuiet = -1 // only the client leaving, or the context, ends the drain
	r.Start()
	srv := r.Server()
	var storeErr error
	var mu sync.Mutex
	mux, err := Mux(Config{Server: srv, Ready: func() error { mu.Lock(); defer mu.Unlock(); return storeErr }})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(mux)
	defer hs.Close()

	if code, body := get(t, hs.URL+"/healthz"); code != 200 || body != "ok\n" {
		t.Fatalf("/healthz: %d %q", code, body)
	}
	if code, body := get(t, hs.URL+"/readyz"); code != 200 {
		t.Fatalf("/readyz of a running relay: %d %q", code, body)
	}
	mu.Lock()
	storeErr = errors.New("relay.db: database is locked")
	mu.Unlock()
	if code, body := get(t, hs.URL+"/readyz"); code != 503 || !strings.Contains(body, "database is locked") {
		t.Fatalf("/readyz with a broken store: %d %q", code, body)
	}
	mu.Lock()
	storeErr = nil
	mu.Unlock()

	// A client holds the drain open until the context ends it.
	tunneltest.StartClient(t, r, nil)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- r.Shutdown(ctx) }()
	for deadline := time.Now().Add(10 * time.Second); ; {
		code, body := get(t, hs.URL+"/readyz")
		if code == 503 && body == "draining\n" {
			break
		}
		if code != 200 || time.Now().After(deadline) {
			cancel()
			t.Fatalf("/readyz while the relay drains: %d %q", code, body)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if code, _ := get(t, hs.URL+"/healthz"); code != 200 {
		t.Fatalf("/healthz while the relay drains: %d", code)
	}
	cancel()
	<-done
}

func TestConfigNeedsServer(t *testing.T) {
	if _, err := Mux(Config{}); err == nil {
		t.Fatal("Mux without a server: no error")
	}
}

// TestQueueDropsScraped: a device that stops reading fills its queue at
// the relay; the packets a client goes on sending it are dropped, and the
// scrape counts them.
func TestQueueDropsScraped(t *testing.T) {
	rid := tunneltest.NewIdentity(t)
	srv, err := relay.New(relay.Config{Identity: rid, SendQueueLen: 16, AllowDevice: func(identity.ID) bool { return true }})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	defer srv.Close()
	devID, cliID := tunneltest.NewIdentity(t), tunneltest.NewIdentity(t)
	cfg := relaylink.Config{Relay: relaylink.RelayConfig{Addr: ln.Addr().String(), ID: rid.ID()}}
	dcfg, ccfg := cfg, cfg
	dcfg.Identity, dcfg.Role = devID, relayproto.RoleDevice
	ccfg.Identity, ccfg.Role = cliID, relayproto.RoleClient
	dev, err := relaylink.Dial(t.Context(), dcfg, relaylink.State{Access: relaylink.AccessList([]identity.ID{cliID.ID()}, nil)})
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close() // and never read: the relay's writes to it back up
	cli, err := relaylink.Dial(t.Context(), ccfg, relaylink.State{})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	go func() { // the client reads what the relay tells it
		for {
			if _, err := cli.Read(); err != nil {
				return
			}
		}
	}()
	pkt := make([]byte, 1200)
	for deadline := time.Now().Add(20 * time.Second); srv.Stats().PacketsDropped == 0; {
		if time.Now().After(deadline) {
			t.Fatal("no packet dropped after 20 s of sending to a device that does not read")
		}
		for range 1000 {
			cli.Send(relayproto.Addr{ID: devID.ID()}, pkt)
		}
		time.Sleep(time.Millisecond)
	}
	mux, err := Mux(Config{Server: srv})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(mux)
	defer hs.Close()
	if v, _ := value(scrape(t, hs.URL+"/metrics"), "burrow_relay_queue_dropped_packets_total"); v < 1 {
		t.Errorf("burrow_relay_queue_dropped_packets_total = %v after drops, want at least 1", v)
	}
}
