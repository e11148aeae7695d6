// Package relaydash is the relay's dashboard: one read-only HTML page, for
// the relay's operator, of the devices online, the client–device sessions
// and their paths, the traffic of the last hour and the recent refusals.
//
// The page is rendered on the server (see render.go) with its style sheet
// and a small script embedded in the binary: no build step, nothing
// fetched from elsewhere. The script fetches the page's live part again
// every 2 seconds; without it, the page reloads itself every 10.
//
// A [Dashboard] is an [http.Handler] meant for the relay's metrics
// listener, mounted at its root. It shows itself only to loopback
// addresses, unless [Config.Token] is set: then to whoever presents the
// token, and to no one else.
//
// It must stay read-only: no form, no request that changes the relay. It
// sees the relay only through [relay.Server.Snapshot] and
// [relay.Server.Stats]; like the relay, it must never import quic-go or
// the packages of the agents (session, paths, client, device, agent).
package relaydash

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"embed"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/relay"
)

// Source is what the dashboard reads of a relay; a [*relay.Server] is one.
type Source interface {
	ID() identity.ID
	Snapshot() relay.Snapshot
	Stats() relay.Stats
}

// A Refusal is an agent the relay turned away.
type Refusal struct {
	Time   time.Time
	Remote string      // the address it connected from
	Role   string      // "device" or "client"; empty if it did not say
	Agent  identity.ID // zero if it did not say
	Reason string
}

// Config configures a [Dashboard].
type Config struct {
	// Relay is the relay shown. Required.
	Relay Source

	// Logger receives a line for each request refused for want of the
	// token. Nil discards logs.
	Logger *slog.Logger

	// Token, if set, is the secret a request must carry, as
	// "Authorization: Bearer TOKEN" or as "?token=TOKEN", which sets a
	// cookie for the requests that follow. It must be at least
	// MinTokenLen bytes. Empty: only requests from loopback addresses are
	// served (an SSH tunnel reaches it from elsewhere).
	Token string

	// Refusals returns the relay's recent refusals, any order. Nil: the
	// page says it has none to show.
	Refusals func() []Refusal

	// Names returns the devices' names (see [relay.DeviceNames]); it is
	// called once for each page shown. Nil: devices are shown by ID only.
	Names func() map[identity.ID]string
}

// MinTokenLen is the shortest [Config.Token] taken.
const MinTokenLen = 16

func (c *Config) validate() error {
	if c.Relay == nil {
		return errors.New("relaydash: Config.Relay is required")
	}
	if c.Token != "" && len(c.Token) < MinTokenLen {
		return errors.New("relaydash: the dashboard token is too short: make one of at least 16 characters (openssl rand -hex 16)")
	}
	if strings.ContainsAny(c.Token, " \t\r\n") {
		return errors.New("relaydash: the dashboard token holds white space: use letters and digits (openssl rand -hex 16)")
	}
	return nil
}

// A Dashboard serves the page at "/" of where it is mounted, its live
// part at "/live" and its assets under "/assets/". Create it with [New]
// and stop it with [Close]; it is safe for concurrent use.
type Dashboard struct {
	cfg       Config
	log       *slog.Logger
	tokenSum  [32]byte // SHA-256 of the token; compared in constant time
	cookieVal string   // what the cookie holds: derived from the token, not the token
	traffic   *sampler

	stop     chan struct{}
	stopOnce sync.Once
	done     chan struct{}
}

// New returns a dashboard of cfg.Relay and starts sampling its traffic;
// [Dashboard.Close] stops it.
func New(cfg Config) (*Dashboard, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	d := &Dashboard{
		cfg:     cfg,
		log:     cfg.Logger,
		traffic: newSampler(),
		stop:    make(chan struct{}),
		done:    make(chan struct{}),
	}
	if d.log == nil {
		d.log = slog.New(slog.DiscardHandler)
	}
	if cfg.Token != "" {
		d.tokenSum = sha256.Sum256([]byte(cfg.Token))
		mac := hmac.New(sha256.New, []byte(cfg.Token))
		mac.Write([]byte("burrow relay dashboard cookie"))
		d.cookieVal = hex.EncodeToString(mac.Sum(nil))
	}
	go d.sample()
	return d, nil
}

// Close stops sampling the relay's traffic and waits for it. It is
// idempotent; the page is still served, its chart no longer moving.
func (d *Dashboard) Close() error {
	d.stopOnce.Do(func() { close(d.stop) })
	<-d.done
	return nil
}

// sample records the relay's forwarded bytes every sampleEvery until Close.
func (d *Dashboard) sample() {
	defer close(d.done)
	t := time.NewTicker(sampleEvery)
	defer t.Stop()
	d.traffic.add(d.cfg.Relay.Stats().BytesForwarded)
	for {
		select {
		case <-d.stop:
			return
		case <-t.C:
			d.traffic.add(d.cfg.Relay.Stats().BytesForwarded)
		}
	}
}

//go:embed assets
var assets embed.FS

// csp lets the page load its own style sheet and script, and fetch its
// live part, and nothing else.
const csp = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; " +
	"base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// ServeHTTP serves the page, its live part and its assets, to whoever may
// see them (see [Config.Token]).
func (d *Dashboard) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Security-Policy", csp)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Cache-Control", "no-store")
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		h.Set("Allow", "GET, HEAD")
		http.Error(w, "the dashboard is read-only: GET only", http.StatusMethodNotAllowed)
		return
	}
	if !d.authorize(w, r) {
		return
	}
	switch p := r.URL.Path; {
	case p == "/":
		d.render(w, renderPage)
	case p == "/live":
		d.render(w, renderLive)
	case p == "/assets/dash.css" || p == "/assets/dash.js":
		http.ServeFileFS(w, r, assets, strings.TrimPrefix(p, "/"))
	default:
		http.NotFound(w, r)
	}
}

// render writes the page, or its live part, with the relay's state now.
func (d *Dashboard) render(w http.ResponseWriter, write func(view) string) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	io.WriteString(w, write(d.view()))
}

// cookieName is the cookie that carries the token's proof after
// "?token=".
const cookieName = "burrow_dashboard"

// authorize reports whether r may see the dashboard; if not, it has
// answered.
func (d *Dashboard) authorize(w http.ResponseWriter, r *http.Request) bool {
	if d.cfg.Token == "" {
		ap, err := netip.ParseAddrPort(r.RemoteAddr)
		if err == nil && ap.Addr().Unmap().IsLoopback() {
			if loopbackHost(r.Host) {
				return true
			}
			// A page of another site whose name was made to resolve to
			// 127.0.0.1 (DNS rebinding) reaches loopback too, under its
			// own name.
			d.log.Warn("dashboard: request for another host name than loopback's refused", "host", r.Host)
			http.Error(w, "the relay's dashboard answers only to localhost, 127.0.0.1 and [::1] without a token: open it by one of those names, or set a dashboard token (--dashboard-token-file)",
				http.StatusForbidden)
			return false
		}
		d.log.Warn("dashboard: request from a non-loopback address refused", "remote", r.RemoteAddr)
		http.Error(w, "the relay's dashboard is shown only on loopback: set a dashboard token "+
			"(--dashboard-token-file), or reach it through an SSH tunnel (ssh -L 9090:127.0.0.1:9090 RELAY-HOST)",
			http.StatusForbidden)
		return false
	}
	if q := r.URL.Query(); q.Has("token") {
		if !d.tokenMatches(q.Get("token")) {
			d.refuse(w, r, "wrong token in the query")
			return false
		}
		http.SetCookie(w, &http.Cookie{
			Name: cookieName, Value: d.cookieVal, Path: "/",
			HttpOnly: true, SameSite: http.SameSiteStrictMode, Secure: r.TLS != nil,
		})
		// Take the token out of the address bar and the history.
		q.Del("token")
		u := *r.URL
		u.RawQuery = q.Encode()
		http.Redirect(w, r, u.RequestURI(), http.StatusSeeOther)
		return false
	}
	// Another scheme (Basic, from a proxy that authenticates its users)
	// is not ours: the cookie may still carry the token's proof.
	if scheme, tok, ok := strings.Cut(r.Header.Get("Authorization"), " "); ok && strings.EqualFold(scheme, "Bearer") {
		if !d.tokenMatches(strings.TrimSpace(tok)) {
			d.refuse(w, r, "wrong token in the Authorization header")
			return false
		}
		return true
	}
	if c, err := r.Cookie(cookieName); err == nil {
		if subtle.ConstantTimeCompare([]byte(c.Value), []byte(d.cookieVal)) == 1 {
			return true
		}
	}
	d.log.Info("dashboard: request without the token refused", "remote", r.RemoteAddr)
	w.Header().Set("WWW-Authenticate", `Bearer realm="burrow relay dashboard"`)
	http.Error(w, "the relay's dashboard needs its token: open /?token=TOKEN once, or send Authorization: Bearer TOKEN",
		http.StatusUnauthorized)
	return false
}

// loopbackHost reports whether host, a request's Host header, names
// loopback: localhost or a loopback address, with any port.
func loopbackHost(host string) bool {
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	if strings.EqualFold(host, "localhost") {
		return true
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.Unmap().IsLoopback()
}

// tokenMatches compares tok with the token in constant time (of the
// token's length too: their hashes are compared).
func (d *Dashboard) tokenMatches(tok string) bool {
	sum := sha256.Sum256([]byte(tok))
	return subtle.ConstantTimeCompare(sum[:], d.tokenSum[:]) == 1
}

// refuse answers a request that presented a wrong token.
func (d *Dashboard) refuse(w http.ResponseWriter, r *http.Request, why string) {
	d.log.Warn("dashboard: "+why, "remote", r.RemoteAddr)
	http.Error(w, "wrong dashboard token", http.StatusForbidden)
}

// RelayRefusals returns a [Config.Refusals] that reads the relay's own
// record of the agents it turned away ([relay.Server.RecentRefusals]).
func RelayRefusals(s interface{ RecentRefusals() []relay.Refusal }) func() []Refusal {
	return func() []Refusal {
		rs := s.RecentRefusals()
		out := make([]Refusal, 0, len(rs))
		for _, r := range rs {
			f := Refusal{Time: r.Time, Remote: r.Remote, Agent: r.Agent, Reason: r.Code.String()}
			if r.Role != 0 {
				f.Role = r.Role.String()
			}
			if r.Reason != "" {
				f.Reason += ": " + r.Reason
			}
			out = append(out, f)
		}
		return out
	}
}
