// Package relaymetrics exports a relay's counters to Prometheus and
// answers health checks: an HTTP mux with /metrics, /healthz and /readyz,
// for an operator's private network (it is plain HTTP and needs no
// credentials, so it must not face the internet).
//
// Its [Collector] reads [relay.Server.Stats] when Prometheus scrapes, and
// does nothing in between: the relay's forwarding path only adds to atomic
// counters. Its registry is its own, never Prometheus' global one, and
// holds the Go runtime and process collectors as well.
//
// Like the relay, it must never be able to decrypt what the relay
// forwards: it imports the relay, identity and relayproto, never quic-go,
// the end-to-end session, the path layer or an agent's role (a test
// checks its import graph).
package relaymetrics

import (
	"fmt"
	"net/http"
	"runtime/debug"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/burrow-tunnel/burrow/relay"
	"github.com/burrow-tunnel/burrow/relayproto"
)

// Config says what to export and how to tell readiness.
type Config struct {
	// Server is the relay whose counters are exported. Required.
	Server *relay.Server

	// Version is the version label of burrow_relay_info. Empty: the main
	// module's version from the build information ("(devel)" for a build
	// from a checkout).
	Version string

	// Ready reports whether the relay's state store is usable: nil if it
	// is, else an error that says why not, which /readyz shows. It is
	// called at every /readyz and must be quick. Nil: the store is taken
	// to be usable, and only a drain makes the relay unready.
	Ready func() error
}

// Mux returns a mux that serves, for cfg.Server:
//
//   - /metrics: the registry of [NewRegistry], in Prometheus' formats;
//   - /healthz: 200 "ok" while the process serves;
//   - /readyz: 200 "ready" while the relay admits agents and its state
//     store is usable; 503 with a one-line reason otherwise ("draining",
//     "state store unavailable: …").
//
// The caller may mount more handlers on it (a dashboard at "/", say) and
// serves it on a listener of its own.
func Mux(cfg Config) (*http.ServeMux, error) {
	reg, err := NewRegistry(cfg)
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if why := notReady(cfg); why != "" {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintln(w, why)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	return mux, nil
}

// notReady says why the relay is not ready, or returns "" if it is.
func notReady(cfg Config) string {
	if cfg.Server.Draining() {
		return "draining"
	}
	if cfg.Ready != nil {
		if err := cfg.Ready(); err != nil {
			return "state store unavailable: " + err.Error()
		}
	}
	return ""
}

// NewRegistry returns a registry of its own holding the relay's
// [Collector] and the Go runtime and process collectors.
func NewRegistry(cfg Config) (*prometheus.Registry, error) {
	if cfg.Server == nil {
		return nil, fmt.Errorf("relaymetrics: Config.Server is required")
	}
	reg := prometheus.NewRegistry()
	for _, c := range []prometheus.Collector{
		NewCollector(cfg.Server, cfg.Version),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("relaymetrics: %w", err)
		}
	}
	return reg, nil
}

// A Collector is a [prometheus.Collector] of a relay's counters, which it
// reads at every scrape. It is safe for concurrent use.
type Collector struct {
	srv     *relay.Server
	version string
}

// NewCollector returns the collector of srv; version is the version label
// of burrow_relay_info (empty: the build's, see [Config.Version]).
func NewCollector(srv *relay.Server, version string) *Collector {
	if version == "" {
		version = buildVersion()
	}
	return &Collector{srv: srv, version: version}
}

func buildVersion() string {
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		return bi.Main.Version
	}
	return "unknown"
}

const ns = "burrow_relay_"

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc(ns+name, help, labels, nil)
}

// The relay's metrics.
var (
	descInfo = desc("info", "Always 1; its labels are the relay's version and ID.", "version", "id")

	descDevices  = desc("devices_attached", "Devices attached now.")
	descClients  = desc("clients_attached", "Clients attached now.")
	descPending  = desc("pending_connections", "Connections accepted that have not authenticated yet.")
	descSessions = desc("sessions",
		"Client–device pairs the relay has carried packets for, both attached, by path: relay (a packet in the last 30 s), direct_or_idle (none since: the relay cannot tell which).", "path")

	descPackets  = desc("forwarded_packets_total", "Packets forwarded between agents (delivered to the destination's queue).")
	descBytes    = desc("forwarded_bytes_total", "Bytes of the packets forwarded between agents.")
	descDropped  = desc("queue_dropped_packets_total", "Packets dropped because the destination's send queue was full.")
	descPeerGone = desc("peer_gone_total", "Answers sent that a packet's destination is offline or does not allow its sender.")

	descRefusals = desc("refusals_total",
		"Agents refused during their handshake, by role (unknown before the hello was read) and reason.", "role", "reason")
	descHandshake = desc("handshake_failures_total",
		"Connections that ended before they attached, for a reason of protocol or transport.", "reason")
	descPreauth = desc("preauth_rejections_total",
		"Unauthenticated connections closed by the pending bounds: per_ip (the address held too many), global (closed as the oldest).", "reason")
	descEnroll = desc("enrollments_total", "Devices presenting an enrollment token, by result (succeeded, failed).", "result")

	descAttaches   = desc("attaches_total", "Agents attached, by role.", "role")
	descReattaches = desc("reattaches_total",
		"Attachments that replaced one of the same agent, or (devices) came less than a minute after it left, by role.", "role")
	descUnused = desc("clients_unused_total", "Clients detached because no attached device allowed them.")

	descRedirects = desc("redirects_total", "Clients sent to another relay of the fleet, where their device is attached.")
	descUDP       = desc("udp_datagrams_total",
		"Datagrams on the UDP port outside the UDP relay path's traffic, by result: answered (binding requests and binds), ignored (of no known type, or a binding request without a current token).", "result")

	descUDPPackets = desc("udp_forwarded_packets_total", "Packets forwarded over the UDP relay path (send datagrams sent on as recv).")
	descUDPBytes   = desc("udp_forwarded_bytes_total", "Bytes of the packets forwarded over the UDP relay path, without their 13-byte headers.")
	descUDPDropped = desc("udp_dropped_total",
		"Datagrams of the UDP relay path dropped without an answer, by reason: malformed, unknown_token, rate_limited, unbound, wrong_tag, unknown_channel, not_allowed, unconfirmed, send_failed.", "reason")
	descUDPBindings  = desc("udp_bindings", "UDP addresses bound to attached agents now.")
	descUDPConfirmed = desc("udp_bindings_confirmed", "UDP bindings confirmed now (their tag came back within a minute): those the relay forwards to.")
)

// RefuseReason is the reason label of burrow_relay_refusals_total for a
// refuse code.
func RefuseReason(c relayproto.RefuseCode) string {
	switch c {
	case relayproto.RefuseVersion:
		return "version"
	case relayproto.RefuseAuth:
		return "auth"
	case relayproto.RefuseNotAllowed:
		return "not_allowed"
	case relayproto.RefuseBadRole:
		return "bad_role"
	case relayproto.RefuseOverloaded:
		return "overloaded"
	case relayproto.RefuseShuttingDown:
		return "shutting_down"
	case relayproto.RefuseTooMany:
		return "too_many"
	}
	return fmt.Sprintf("code_%d", byte(c))
}

// RoleLabel is the role label of a relay's metrics.
func RoleLabel(r relayproto.Role) string {
	switch r {
	case relayproto.RoleDevice, relayproto.RoleClient:
		return r.String()
	}
	return "unknown"
}

// Describe sends the descriptions of every metric of the collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descInfo, descDevices, descClients, descPending, descSessions, descPackets, descBytes,
		descDropped, descPeerGone, descRefusals, descHandshake, descPreauth, descEnroll, descAttaches,
		descReattaches, descUnused, descRedirects, descUDP, descUDPPackets, descUDPBytes, descUDPDropped, descUDPBindings,
		descUDPConfirmed} {
		ch <- d
	}
}

// Collect reads the relay's counters and sends them.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	st := c.srv.Stats()
	gauge := func(d *prometheus.Desc, v int, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, float64(v), labels...)
	}
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge(descInfo, 1, c.version, c.srv.ID().String())
	gauge(descDevices, st.Devices)
	gauge(descClients, st.Clients)
	gauge(descPending, st.Pending)
	relayed, quiet := c.srv.PairCounts()
	gauge(descSessions, relayed, "relay")
	gauge(descSessions, quiet, "direct_or_idle")
	counter(descPackets, st.PacketsForwarded)
	counter(descBytes, st.BytesForwarded)
	counter(descDropped, st.PacketsDropped)
	counter(descPeerGone, st.PeerGone)
	for k, n := range st.Refusals {
		counter(descRefusals, n, RoleLabel(k.Role), RefuseReason(k.Code))
	}
	for f, n := range st.HandshakeFailures {
		counter(descHandshake, n, f.String())
	}
	counter(descPreauth, st.PreauthPerIP, "per_ip")
	counter(descPreauth, st.PreauthGlobal, "global")
	counter(descEnroll, st.Enrolled, "succeeded")
	counter(descEnroll, st.EnrollFailed, "failed")
	counter(descAttaches, st.DeviceAttaches, "device")
	counter(descAttaches, st.ClientAttaches, "client")
	counter(descReattaches, st.DeviceReattaches, "device")
	counter(descReattaches, st.ClientReattaches, "client")
	counter(descUnused, st.ClientsUnused)
	counter(descRedirects, st.Redirects)
	counter(descUDP, st.UDPAnswered, "answered")
	counter(descUDP, st.UDPIgnored, "ignored")
	counter(descUDPPackets, st.UDPForwarded)
	counter(descUDPBytes, st.UDPForwardedBytes)
	for d, n := range st.UDPDropped {
		counter(descUDPDropped, n, d.String())
	}
	gauge(descUDPBindings, st.UDPBindings)
	gauge(descUDPConfirmed, st.UDPBindingsConfirmed)
}
