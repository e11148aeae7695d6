// Package devicemetrics exposes a running device agent to Prometheus and
// to health checks: a [prometheus.Collector] that reads the device's
// counters and state at each scrape ([device.Device.Metrics] and
// [device.Device.Status]), a registry of its own with the Go runtime and
// process collectors, and an HTTP handler serving /metrics, /healthz and
// /readyz.
//
// Only the agents know the path each session takes (the relay sees the
// packets it relays, not those that go direct), so this is where sessions
// by path are counted.
//
// It reads the device and changes nothing in it. It must never register
// with Prometheus's global registry (two devices in one process would
// collide), nor make a label value from what a client sent: service
// labels are the device's configured services and [device.UnknownService].
// Among burrow's packages it imports device and identity only.
package devicemetrics

import (
	"fmt"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/burrow-tunnel/burrow/device"
)

// The metrics' descriptions.
var (
	sessionsDesc = prometheus.NewDesc("burrow_device_sessions",
		"Sessions with clients open now, by the path their packets take: relay (the relay's TCP session), relay_udp (the relay's UDP port), direct (a direct UDP path found through the relay) or lan (a session that started on the LAN, with no relay).",
		[]string{"path"}, nil)
	sessionsStartedDesc = prometheus.NewDesc("burrow_device_sessions_started_total",
		"Sessions with clients the device accepted.", nil, nil)
	sessionsEndedDesc = prometheus.NewDesc("burrow_device_sessions_ended_total",
		"Sessions with clients that ended.", nil, nil)
	tunnelsDesc = prometheus.NewDesc("burrow_device_tunnels_total",
		"Tunnel requests, by service (a configured one, or "+device.UnknownService+" for a name the device does not have) and result: ok, or the refusal (not_authorized, unknown_service, dial_failed, rate_limited), or aborted (the client went away before the tunnel opened).",
		[]string{"service", "result"}, nil)
	bytesDesc = prometheus.NewDesc("burrow_device_tunnel_bytes_total",
		"Bytes tunnels carried, by direction: to_service (from clients) or from_service (to clients); counted when each tunnel closes.",
		[]string{"direction"}, nil)
	attachedDesc = prometheus.NewDesc("burrow_device_relay_attached",
		"1 while the device is attached to its relay, else 0.", nil, nil)
	pairingsDesc = prometheus.NewDesc("burrow_device_pairings_total",
		"Pairing requests, by result: ok, refused (unknown, spent or expired invite, wrong secret, too many attempts) or failed (the device could not save the pairing).",
		[]string{"result"}, nil)
)

// A Collector collects a device's metrics at each scrape. Create it with
// [NewCollector]; it is safe for concurrent use.
type Collector struct {
	d *device.Device
}

// NewCollector returns a Collector of d's metrics.
func NewCollector(d *device.Device) *Collector { return &Collector{d: d} }

// Describe sends the descriptions of every metric the Collector makes.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{sessionsDesc, sessionsStartedDesc, sessionsEndedDesc,
		tunnelsDesc, bytesDesc, attachedDesc, pairingsDesc} {
		ch <- d
	}
}

// Collect reads the device and sends its metrics.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	m := c.d.Metrics()
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge(sessionsDesc, float64(m.SessionsRelay), "relay")
	gauge(sessionsDesc, float64(m.SessionsRelayUDP), "relay_udp")
	gauge(sessionsDesc, float64(m.SessionsDirect), "direct")
	gauge(sessionsDesc, float64(m.SessionsLAN), "lan")
	counter(sessionsStartedDesc, m.SessionsStarted)
	counter(sessionsEndedDesc, m.SessionsEnded)
	for _, t := range m.Tunnels {
		counter(tunnelsDesc, t.Count, t.Service, t.Result.String())
	}
	counter(bytesDesc, m.BytesToService, "to_service")
	counter(bytesDesc, m.BytesFromService, "from_service")
	attached := 0.0
	if c.d.Status().Relay.Attached {
		attached = 1
	}
	gauge(attachedDesc, attached)
	counter(pairingsDesc, m.PairingsOK, "ok")
	counter(pairingsDesc, m.PairingsRefused, "refused")
	counter(pairingsDesc, m.PairingsFailed, "failed")
}

// NewRegistry returns a registry, not the global one, holding d's
// Collector and the Go runtime and process collectors.
func NewRegistry(d *device.Device) *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		NewCollector(d),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return reg
}

// Handler serves d's metrics and health:
//
//	GET /metrics  the Prometheus text format, from [NewRegistry]
//	GET /healthz  200 while the process runs
//	GET /readyz   200 while d is attached to its relay; 503 with a
//	              one-line reason while it is not
func Handler(d *device.Device) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(NewRegistry(d), promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if reason := notReady(d); reason != "" {
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintln(w, reason)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	return mux
}

// notReady says why d is not ready, or "" if it is.
func notReady(d *device.Device) string {
	r := d.Status().Relay
	if r.Attached {
		return ""
	}
	reason := "not attached to the relay"
	if r.Relay != "" {
		reason += " " + r.Relay
	}
	if r.Error != "" {
		reason += ": " + r.Error
	}
	return oneLine(reason)
}

// oneLine keeps s to its first line.
func oneLine(s string) string {
	for i := range len(s) {
		if s[i] == '\n' || s[i] == '\r' {
			return s[:i]
		}
	}
	return s
}
