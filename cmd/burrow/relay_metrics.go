package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/burrow-tunnel/burrow/relay"
	"github.com/burrow-tunnel/burrow/relaymetrics"
)

// relayMetricsMux is what "burrow relay --metrics" serves: /metrics,
// /healthz and /readyz of package relaymetrics. Further pages of the
// operator's listener are mounted on it here.
func relayMetricsMux(srv *relay.Server, ready func() error) (*http.ServeMux, error) {
	return relaymetrics.Mux(relaymetrics.Config{Server: srv, Ready: ready})
}

// serveRelayMetrics serves the relay's metrics listener on addr (--metrics;
// a bare port is 127.0.0.1:PORT) until stop is called. Call stop after the
// relay has stopped, so that /readyz says "draining" while it drains.
func serveRelayMetrics(addr string, srv *relay.Server, ready func() error, log *slog.Logger) (stop func(), err error) {
	mux, err := relayMetricsMux(srv, ready)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", loopbackPort(addr))
	if err != nil {
		return nil, fmt.Errorf("--metrics %s: %w: give a free address, such as 127.0.0.1:9090 (a bare port listens on 127.0.0.1)", addr, err)
	}
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: time.Minute,
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelDebug)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := hs.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Warn("metrics listener failed", "addr", ln.Addr().String(), "err", err)
		}
	}()
	log.Info("metrics listening", "addr", ln.Addr().String(), "paths", "/metrics /healthz /readyz")
	if tcp, ok := ln.Addr().(*net.TCPAddr); ok && !tcp.IP.IsLoopback() {
		log.Warn("metrics listener is beyond loopback, in plain HTTP without credentials: keep it on a private network", "addr", ln.Addr().String())
	}
	return func() {
		hs.Close()
		<-done
	}, nil
}
