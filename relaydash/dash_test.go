package relaydash

import (
	"fmt"
	"html"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/burrow-tunnel/burrow/device"
	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/internal/testing/tunneltest"
	"github.com/burrow-tunnel/burrow/relay"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// newRelay returns a relay server that serves no one, closed when the
// test ends.
func newRelay(t *testing.T) *relay.Server {
	t.Helper()
	srv, err := relay.New(relay.Config{Identity: tunneltest.NewIdentity(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	return srv
}

// newDash returns a dashboard of cfg, closed when the test ends.
func newDash(t *testing.T, cfg Config) *Dashboard {
	t.Helper()
	if cfg.Relay == nil {
		cfg.Relay = newRelay(t)
	}
	cfg.Logger = tunneltest.Logger(t)
	d, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

// get serves a GET of target from remote and returns the response.
func get(d http.Handler, remote, target string, hdr ...string) *http.Response {
	r := httptest.NewRequest(http.MethodGet, target, nil)
	r.RemoteAddr, r.Host = remote, "localhost:9090"
	for i := 0; i+1 < len(hdr); i += 2 {
		if hdr[i] == "Host" {
			r.Host = hdr[i+1]
			continue
		}
		r.Header.Set(hdr[i], hdr[i+1])
	}
	w := httptest.NewRecorder()
	d.ServeHTTP(w, r)
	return w.Result()
}

func body(t *testing.T, resp *http.Response) string {
	t.Helper()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestLoopbackOnly: without a token, loopback addresses see the page and
// others are refused with a message that says what to do.
func TestLoopbackOnly(t *testing.T) {
	d := newDash(t, Config{})
	for _, remote := range []string{"127.0.0.1:4000", "[::1]:4000", "127.9.9.9:4000"} {
		if resp := get(d, remote, "/"); resp.StatusCode != http.StatusOK {
			t.Errorf("from %s: %s, want 200", remote, resp.Status)
		}
	}
	for _, remote := range []string{"203.0.113.7:4000", "[2001:db8::1]:4000", "10.0.0.1:80", "garbage"} {
		resp := get(d, remote, "/")
		b := body(t, resp)
		if resp.StatusCode != http.StatusForbidden || !strings.Contains(b, "--dashboard-token-file") || !strings.Contains(b, "SSH tunnel") {
			t.Errorf("from %s: %s %q, want 403 saying to set a token or use an SSH tunnel", remote, resp.Status, b)
		}
		if strings.Contains(b, "Devices online") {
			t.Errorf("from %s: the page was shown", remote)
		}
	}
}

// TestLoopbackHostOnly: without a token, a request from loopback must
// name loopback too, so that a page of another site whose name resolves
// to 127.0.0.1 (DNS rebinding) cannot read the dashboard.
func TestLoopbackHostOnly(t *testing.T) {
	d := newDash(t, Config{})
	for _, host := range []string{"localhost:9090", "LOCALHOST", "127.0.0.1:9090", "127.0.0.1", "[::1]:9090", "[::1]"} {
		if resp := get(d, "127.0.0.1:4000", "/", "Host", host); resp.StatusCode != http.StatusOK {
			t.Errorf("Host %s: %s, want 200", host, resp.Status)
		}
	}
	for _, host := range []string{"evil.example:9090", "evil.example", "10.0.0.1:9090", "localhost.evil.example", ""} {
		resp := get(d, "127.0.0.1:4000", "/live", "Host", host)
		if b := body(t, resp); resp.StatusCode != http.StatusForbidden || strings.Contains(b, "<section") {
			t.Errorf("Host %q: %s, want 403 and nothing of the page", host, resp.Status)
		}
	}
}

// TestToken: with a token, every request must carry it, from loopback
// too: in the Authorization header, or once in the query, which sets a
// cookie that carries it on.
func TestToken(t *testing.T) {
	const token = "0123456789abcdef-token"
	d := newDash(t, Config{Token: token})
	const lo = "127.0.0.1:4000"

	resp := get(d, lo, "/")
	if resp.StatusCode != http.StatusUnauthorized || !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), "Bearer") {
		t.Errorf("no token: %s, want 401 with WWW-Authenticate: Bearer", resp.Status)
	}
	if resp := get(d, "203.0.113.7:4000", "/", "Authorization", "Bearer "+token); resp.StatusCode != http.StatusOK {
		t.Errorf("right bearer token from afar: %s, want 200", resp.Status)
	}
	if resp := get(d, lo, "/", "Authorization", "bearer "+token); resp.StatusCode != http.StatusOK {
		t.Errorf("the scheme in lower case: %s, want 200", resp.Status)
	}
	if resp := get(d, lo, "/", "Authorization", "Basic "+token); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("another scheme, and no cookie: %s, want 401", resp.Status)
	}
	for _, auth := range []string{"Bearer wrong-token-wrong-token", "Bearer " + token + "x", "Bearer "} {
		if resp := get(d, lo, "/", "Authorization", auth); resp.StatusCode != http.StatusForbidden {
			t.Errorf("Authorization %q: %s, want 403", auth, resp.Status)
		}
	}
	if resp := get(d, lo, "/?token=nope"); resp.StatusCode != http.StatusForbidden || len(resp.Cookies()) != 0 {
		t.Errorf("wrong token in the query: %s, cookies %v, want 403 and none", resp.Status, resp.Cookies())
	}

	resp = get(d, lo, "/live?token="+token)
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/live" {
		t.Fatalf("right token in the query: %s to %q, want 303 to /live", resp.Status, resp.Header.Get("Location"))
	}
	cs := resp.Cookies()
	if len(cs) != 1 || !cs[0].HttpOnly || cs[0].SameSite != http.SameSiteStrictMode || cs[0].Value == "" || strings.Contains(cs[0].Value, token) {
		t.Fatalf("cookie %+v, want one, HttpOnly, SameSite=Strict, without the token in it", cs)
	}
	if resp := get(d, "203.0.113.7:4000", "/", "Cookie", cs[0].Name+"="+cs[0].Value); resp.StatusCode != http.StatusOK {
		t.Errorf("with the cookie: %s, want 200", resp.Status)
	}
	if resp := get(d, lo, "/", "Cookie", cs[0].Name+"="+cs[0].Value, "Authorization", "Basic YWxpY2U6c2VjcmV0"); resp.StatusCode != http.StatusOK {
		t.Errorf("with the cookie, behind a proxy that sends Basic credentials: %s, want 200", resp.Status)
	}
	if resp := get(d, lo, "/", "Cookie", cs[0].Name+"="+token); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("with a forged cookie: %s, want 401", resp.Status)
	}
}

// TestNewRefusesBadConfig: a missing relay, a short token or one with
// white space is refused at New.
func TestNewRefusesBadConfig(t *testing.T) {
	srv := newRelay(t)
	for _, cfg := range []Config{{}, {Relay: srv, Token: "short"}, {Relay: srv, Token: "0123456789abcdef\n"}} {
		if d, err := New(cfg); err == nil {
			d.Close()
			t.Errorf("New(%+v) took it", cfg)
		}
	}
}

// TestHeaders: every answer forbids framing, sniffing, caching and any
// source but the dashboard's own; the page loads nothing from elsewhere;
// it is read-only.
func TestHeaders(t *testing.T) {
	d := newDash(t, Config{})
	const lo = "127.0.0.1:4000"
	types := map[string]string{"/": "text/html", "/live": "text/html", "/assets/dash.css": "text/css", "/assets/dash.js": "text/javascript"}
	for path, ctype := range types {
		resp := get(d, lo, path)
		h := resp.Header
		if resp.StatusCode != http.StatusOK || !strings.HasPrefix(h.Get("Content-Type"), ctype) {
			t.Errorf("%s: %s %q, want 200 %s", path, resp.Status, h.Get("Content-Type"), ctype)
		}
		if !strings.HasPrefix(h.Get("Content-Security-Policy"), "default-src 'none'; script-src 'self';") ||
			h.Get("X-Content-Type-Options") != "nosniff" || h.Get("X-Frame-Options") != "DENY" || h.Get("Cache-Control") != "no-store" {
			t.Errorf("%s: headers %v", path, h)
		}
		if b := body(t, resp); strings.Contains(b, "http://") || strings.Contains(b, "https://") || strings.Contains(b, "<form") {
			t.Errorf("%s refers to another site or holds a form", path)
		}
	}
	if resp := get(d, lo, "/assets/page.html"); resp.StatusCode != http.StatusNotFound {
		t.Errorf("the template: %s, want 404", resp.Status)
	}
	if resp := get(d, lo, "/metrics"); resp.StatusCode != http.StatusNotFound {
		t.Errorf("an unknown path: %s, want 404", resp.Status)
	}
	r := httptest.NewRequest(http.MethodPost, "/", strings.NewReader("x"))
	r.RemoteAddr = lo
	w := httptest.NewRecorder()
	d.ServeHTTP(w, r)
	if w.Code != http.StatusMethodNotAllowed || w.Header().Get("Allow") != "GET, HEAD" {
		t.Errorf("POST: %d, want 405", w.Code)
	}
}

// TestEscaping: a device's name, a refusal's reason and address, whatever
// they hold, are shown as text.
func TestEscaping(t *testing.T) {
	const hostile = `<script>alert(1)</script><img src=x onerror=alert(2)>"'&`
	r := tunneltest.StartRelay(t)
	dev := tunneltest.StartDevice(t, r, echoDevice(t))
	d := newDash(t, Config{
		Relay: r.Server(),
		Names: func() map[identity.ID]string { return map[identity.ID]string{dev.ID(): hostile} },
		Refusals: func() []Refusal {
			return []Refusal{{Time: time.Now(), Remote: hostile, Role: hostile, Reason: hostile}}
		},
	})
	b := body(t, get(d, "127.0.0.1:4000", "/"))
	if !strings.Contains(b, dev.ID().Short()) {
		t.Fatal("the attached device is not shown")
	}
	if strings.Contains(b, "<script>alert") || strings.Contains(b, "<img") {
		t.Fatal("a hostile name or refusal went into the page unescaped")
	}
	if n := strings.Count(b, "&lt;script&gt;alert(1)&lt;/script&gt;"); n != 4 {
		t.Errorf("the hostile text is shown escaped %d times, want 4 (name, address, role, reason)", n)
	}
}

// echoDevice is the configuration of a device with one service, an echo
// server on loopback.
func echoDevice(t *testing.T) device.Config {
	return device.Config{Services: map[string]string{"echo": tunneltest.StartServer(t, tunneltest.Echo).Addr}}
}

// TestChart: a known hour of samples gives known bars.
func TestChart(t *testing.T) {
	// Eleven minutes: ten of 1,000 bytes per sample, then one of 6,000.
	samples := []uint64{0}
	for i := range 66 {
		step := uint64(1000)
		if i >= 60 {
			step = 6000
		}
		samples = append(samples, samples[len(samples)-1]+step)
	}
	c := newChart(samples)
	if c.Minutes != 11 || len(c.Bars) != 11 {
		t.Fatalf("%d minutes, %d bars, want 11", c.Minutes, len(c.Bars))
	}
	if c.Peak != "35.2 KiB" || c.Total != "93.8 KiB" {
		t.Errorf("peak %s, total %s, want 35.2 KiB (36,000 B), 93.8 KiB (96,000 B)", c.Peak, c.Total)
	}
	newest, older := c.Bars[0], c.Bars[1]
	if newest != (chartBar{X: 590, Y: 0, W: 8, H: 100, Title: "the last minute: 35.2 KiB"}) {
		t.Errorf("newest bar %+v", newest)
	}
	if older != (chartBar{X: 580, Y: 83, W: 8, H: 17, Title: "1–2 minutes ago: 5.9 KiB"}) {
		t.Errorf("bar a minute older %+v", older)
	}

	// Rendered: one rect per bar, in the SVG.
	rects := regexp.MustCompile(`<rect x="(\d+)" y="(\d+)" width="8" height="(\d+)">`).FindAllStringSubmatch(renderLive(view{Traffic: c}), -1)
	if len(rects) != 11 || rects[0][1] != "590" || rects[0][3] != "100" || rects[1][3] != "17" {
		t.Errorf("rendered rects %q", rects)
	}

	if c := newChart([]uint64{5}); c.Minutes != 0 || len(c.Bars) != 0 {
		t.Errorf("one sample: %+v, want no bar", c)
	}
}

// TestSamplerRing: the sampler keeps the newest maxSamples, oldest first.
func TestSamplerRing(t *testing.T) {
	s := newSampler()
	for i := range uint64(maxSamples + 40) {
		s.add(i)
	}
	v := s.values()
	if len(v) != maxSamples || v[0] != 40 || v[maxSamples-1] != maxSamples+39 {
		t.Fatalf("%d samples from %d to %d", len(v), v[0], v[len(v)-1])
	}
}

// TestRenderEscapesEveryField: every string of a view, set to markup, is
// escaped wherever the page writes it, since the page is written by hand.
func TestRenderEscapesEveryField(t *testing.T) {
	const evil = `<b x='1'>"&`
	var v view
	fill(reflect.ValueOf(&v).Elem(), evil)
	v.RefusalsKnown, v.Traffic.Minutes = true, 1
	for name, out := range map[string]string{"page": renderPage(v), "live": renderLive(v)} {
		if strings.Contains(out, "<b x=") || strings.Contains(out, `'1'`) {
			t.Errorf("%s: a value was written unescaped:\n%s", name, out)
		}
		// Every string field shows up, escaped.
		if n := strings.Count(out, html.EscapeString(evil)); n < 20 {
			t.Errorf("%s: the escaped value appears %d times, want every string field (20 or more)", name, n)
		}
	}
}

// fill sets every string in v, which must be addressable, to s, and gives
// every slice one element.
func fill(v reflect.Value, s string) {
	switch v.Kind() {
	case reflect.String:
		v.SetString(s)
	case reflect.Struct:
		for i := range v.NumField() {
			fill(v.Field(i), s)
		}
	case reflect.Slice:
		v.Set(reflect.MakeSlice(v.Type(), 1, 1))
		fill(v.Index(0), s)
	}
}

// manyAgents is a relay with n devices attached, for the page's bounds.
type manyAgents struct {
	id identity.ID
	n  int
}

func (m manyAgents) ID() identity.ID    { return m.id }
func (m manyAgents) Stats() relay.Stats { return relay.Stats{Devices: m.n} }
func (m manyAgents) Snapshot() relay.Snapshot {
	snap := relay.Snapshot{Taken: time.Now()}
	for i := range m.n {
		snap.Devices = append(snap.Devices, relay.Agent{ID: identity.ID{byte(i >> 8), byte(i)}, Since: time.Now()})
	}
	return snap
}

// TestRowsBounded: a relay of many devices gets their count and the
// first maxRows rows, not a page that grows with it.
func TestRowsBounded(t *testing.T) {
	d := newDash(t, Config{Relay: manyAgents{id: identity.ID{9}, n: maxRows + 100}})
	b := body(t, get(d, "127.0.0.1:4000", "/live"))
	if rows := strings.Count(b, "<tr><td><code"); rows != maxRows {
		t.Errorf("%d device rows, want %d", rows, maxRows)
	}
	if !strings.Contains(b, fmt.Sprintf("Devices online (%d)", maxRows+100)) || !strings.Contains(b, fmt.Sprintf("The first %d by ID", maxRows)) {
		t.Error("the page does not give the count of all devices and say it shows the first ones")
	}
}
