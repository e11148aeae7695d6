//go:build !nometrics

package main

import (
	"log/slog"

	"github.com/burrow-tunnel/burrow/relay"
	"github.com/burrow-tunnel/burrow/relaydash"
	"github.com/burrow-tunnel/burrow/relaymetrics"
)

// serveRelayMetrics serves the relay's operator listener on addr
// (--metrics; a bare port is 127.0.0.1:PORT) until stop is called:
// /metrics, /healthz and /readyz of package relaymetrics, and the
// dashboard of package relaydash at "/" (shown to loopback only, unless
// dash has a Token). Call stop after the relay has stopped, so that
// /readyz says "draining" while it drains.
func serveRelayMetrics(addr string, srv *relay.Server, ready func() error, dash relaydash.Config, log *slog.Logger) (stop func(), err error) {
	mux, err := relaymetrics.Mux(relaymetrics.Config{Server: srv, Ready: ready, Version: burrowVersion()})
	if err != nil {
		return nil, err
	}
	dash.Relay, dash.Logger, dash.Refusals = srv, log, relaydash.RelayRefusals(srv)
	d, err := relaydash.New(dash)
	if err != nil {
		return nil, err
	}
	mux.Handle("/", d)
	stop, err = serveMetricsHTTP(addr, mux, log)
	if err != nil {
		d.Close()
		return nil, err
	}
	return func() {
		stop()
		d.Close()
	}, nil
}
