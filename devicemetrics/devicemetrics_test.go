package devicemetrics_test

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/goleak"

	"github.com/burrow-tunnel/burrow/device"
	"github.com/burrow-tunnel/burrow/devicemetrics"
	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/internal/testing/promtest"
	"github.com/burrow-tunnel/burrow/internal/testing/tunneltest"
	"github.com/burrow-tunnel/burrow/pairing"
	"github.com/burrow-tunnel/burrow/session"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// get gets path from the handler at addr and returns the status and
// body.
func get(t *testing.T, addr, path string) (int, string) {
	t.Helper()
	return promtest.Get(t, "http://"+addr+path)
}

// families scrapes the device's metrics at addr.
func families(t *testing.T, addr string) map[string]*dto.MetricFamily {
	return promtest.Scrape(t, "http://"+addr+"/metrics")
}

var value = promtest.Value

// waitFor scrapes until cond holds, for at most 10s: counters move when
// the device has seen the end of what the test did.
func waitFor(t *testing.T, addr, what string, cond func(map[string]*dto.MetricFamily) bool) map[string]*dto.MetricFamily {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		mf := families(t, addr)
		if cond(mf) {
			return mf
		}
		if time.Now().After(deadline) {
			t.Fatalf("never saw %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func refusedWith(t *testing.T, err error, want error) {
	t.Helper()
	var re *session.RefusedError
	if !errors.As(err, &re) || !errors.Is(err, want) {
		t.Fatalf("got %v, want a refusal matching %v", err, want)
	}
}

// TestDeviceMetrics drives a real device through a relay, with real
// tunnels, refusals and pairings, and checks every metric the handler
// serves moved as it should.
func TestDeviceMetrics(t *testing.T) {
	echo := tunneltest.StartServer(t, tunneltest.Echo)
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := dead.Addr().String()
	dead.Close() // nothing listens there: dialing it fails

	r := tunneltest.StartRelay(t)
	cid := tunneltest.NewIdentity(t)
	d := tunneltest.StartDevice(t, r, device.Config{
		Services: map[string]string{"echo": echo.Addr, "dead": deadAddr, "admin": echo.Addr},
		Clients:  map[identity.ID][]string{cid.ID(): {"echo", "dead"}},
		Roles:    map[string][]string{"viewer": {"echo"}},
		StateDir: t.TempDir(),
	})
	addr := tunneltest.HTTPServer(t, devicemetrics.Handler(d))

	if code, body := get(t, addr, "/healthz"); code != http.StatusOK {
		t.Fatalf("/healthz: %d %s", code, body)
	}
	if code, body := get(t, addr, "/readyz"); code != http.StatusOK {
		t.Fatalf("/readyz while attached: %d %s", code, body)
	}
	mf := families(t, addr)
	for _, name := range []string{"burrow_device_sessions", "burrow_device_tunnels_total", "burrow_device_tunnel_bytes_total",
		"burrow_device_relay_attached", "burrow_device_pairings_total", "go_goroutines", "process_cpu_seconds_total"} {
		if f := mf[name]; f == nil || f.GetHelp() == "" {
			t.Errorf("%s missing or without HELP", name)
		}
	}
	if v, _ := value(mf, "burrow_device_relay_attached"); v != 1 {
		t.Errorf("burrow_device_relay_attached = %v while attached, want 1", v)
	}

	// Bytes through a tunnel, both ways.
	c := tunneltest.StartClient(t, r, cid)
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	const size = 100_000
	tun, err := c.Dial(ctx, d.ID(), "echo")
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		tunneltest.StreamOf(tun, 7, size)
		tun.CloseWrite()
	}()
	n, err := io.Copy(io.Discard, tun)
	tun.Close()
	if err != nil || n != size {
		t.Fatalf("echoed %d bytes (%v), want %d", n, err, size)
	}
	mf = families(t, addr)
	// Through the relay: over its TCP session, or its UDP port once the
	// session has moved there.
	tcp, okTCP := value(mf, "burrow_device_sessions", "path", "relay")
	udp, okUDP := value(mf, "burrow_device_sessions", "path", "relay_udp")
	if !okTCP || !okUDP || tcp+udp != 1 {
		t.Errorf("burrow_device_sessions: relay %v, relay_udp %v with one session open through the relay; want 1 in all", tcp, udp)
	}
	if v, ok := value(mf, "burrow_device_sessions", "path", "direct"); !ok || v != 0 {
		t.Errorf("burrow_device_sessions{path=direct} = %v (present %v), want 0", v, ok)
	}

	// Refusals: a service not granted, one the device does not have, one
	// that does not answer.
	_, err = c.Dial(ctx, d.ID(), "admin")
	refusedWith(t, err, session.ErrNotAuthorized)
	_, err = c.Dial(ctx, d.ID(), "bogus-name")
	refusedWith(t, err, session.ErrUnknownService)
	_, err = c.Dial(ctx, d.ID(), "dead")
	refusedWith(t, err, session.ErrServiceUnreachable)

	// Pairing: a new client with an invite, and the configured client
	// with an invite the device never made (the relay lets it through,
	// as the device lists it).
	inv, err := d.Invite("viewer", time.Minute, "")
	if err != nil {
		t.Fatal(err)
	}
	paired := tunneltest.StartClient(t, r, nil)
	if _, err := paired.Pair(ctx, inv); err != nil {
		t.Fatal(err)
	}
	paired.Close() // its session ends
	forged := inv
	forged.Secret = pairing.NewSecret()
	_, err = c.Pair(ctx, forged)
	refusedWith(t, err, session.ErrNotAuthorized)

	mf = waitFor(t, addr, "the tunnel's bytes and the end of a session", func(mf map[string]*dto.MetricFamily) bool {
		bytes, _ := value(mf, "burrow_device_tunnel_bytes_total", "direction", "from_service")
		ended, _ := value(mf, "burrow_device_sessions_ended_total")
		return bytes == size && ended == 1
	})
	want := []struct {
		name   string
		labels []string
		v      float64
	}{
		{"burrow_device_tunnel_bytes_total", []string{"direction", "to_service"}, size},
		{"burrow_device_tunnels_total", []string{"service", "echo", "result", "ok"}, 1},
		{"burrow_device_tunnels_total", []string{"service", "admin", "result", "not_authorized"}, 1},
		{"burrow_device_tunnels_total", []string{"service", device.UnknownService, "result", "unknown_service"}, 1},
		{"burrow_device_tunnels_total", []string{"service", "dead", "result", "dial_failed"}, 1},
		{"burrow_device_tunnels_total", []string{"service", "dead", "result", "ok"}, 0},
		{"burrow_device_pairings_total", []string{"result", "ok"}, 1},
		{"burrow_device_pairings_total", []string{"result", "refused"}, 1},
		{"burrow_device_pairings_total", []string{"result", "failed"}, 0},
		// c's session (its tunnels and pairing share it) and paired's.
		{"burrow_device_sessions_started_total", nil, 2},
		{"burrow_device_sessions", []string{"path", "direct"}, 0},
	}
	for _, w := range want {
		if v, ok := value(mf, w.name, w.labels...); !ok || v != w.v {
			t.Errorf("%s%v = %v (present %v), want %v", w.name, w.labels, v, ok, w.v)
		}
	}
	// The bogus name made no label value: services are the configured
	// ones and the one for unknown names.
	services := map[string]bool{}
	for _, m := range mf["burrow_device_tunnels_total"].Metric {
		for _, l := range m.Label {
			if l.GetName() == "service" {
				services[l.GetValue()] = true
			}
		}
	}
	if len(services) != 4 || services["bogus-name"] {
		t.Errorf("service label values %v, want echo, dead, admin and %s", services, device.UnknownService)
	}

	// Without its relay, the device is not ready, and says why.
	r.Stop()
	deadline := time.Now().Add(10 * time.Second)
	for {
		code, body := get(t, addr, "/readyz")
		if code == http.StatusServiceUnavailable {
			if !strings.HasPrefix(body, "not attached to the relay") || strings.Count(body, "\n") != 1 {
				t.Errorf("/readyz says %q, want one line saying it is not attached", body)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/readyz still %d %q with the relay stopped", code, body)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if v, _ := value(families(t, addr), "burrow_device_relay_attached"); v != 0 {
		t.Errorf("burrow_device_relay_attached = %v with the relay stopped, want 0", v)
	}
	if code, _ := get(t, addr, "/healthz"); code != http.StatusOK {
		t.Errorf("/healthz: %d with the relay stopped, want 200: the process runs", code)
	}
}

// TestRegistriesApart: two devices in one process each have their own
// registry; neither touches the global one.
func TestRegistriesApart(t *testing.T) {
	r := tunneltest.StartRelay(t)
	for range 2 {
		d := tunneltest.StartDevice(t, r, device.Config{
			Services: map[string]string{"echo": "127.0.0.1:1"},
			Clients:  map[identity.ID][]string{tunneltest.NewIdentity(t).ID(): {"echo"}},
		})
		if _, err := devicemetrics.NewRegistry(d).Gather(); err != nil {
			t.Fatal(err)
		}
	}
	global, err := prometheus.DefaultGatherer.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range global {
		if strings.HasPrefix(f.GetName(), "burrow_") {
			t.Errorf("%s is in the global registry", f.GetName())
		}
	}
}
