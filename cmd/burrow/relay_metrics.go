package main

import (
	"fmt"
	"log/slog"
	"os"
	"strings"

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
	mux, err := relaymetrics.Mux(relaymetrics.Config{Server: srv, Ready: ready})
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

// readDashboardToken reads the dashboard's token from path
// (--dashboard-token-file): the file's content without surrounding white
// space. Like a key, the file must not be readable by others.
func readDashboardToken(path string) (string, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return "", fmt.Errorf("--dashboard-token-file: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return "", fmt.Errorf("--dashboard-token-file %s is readable by others (mode %v): chmod 600 %s", path, fi.Mode().Perm(), path)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("--dashboard-token-file: %w", err)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return "", fmt.Errorf("--dashboard-token-file %s is empty: put a token in it (openssl rand -hex 16 > %s)", path, path)
	}
	return tok, nil
}
