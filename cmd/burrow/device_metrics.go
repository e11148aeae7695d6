package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/burrow-tunnel/burrow/device"
	"github.com/burrow-tunnel/burrow/devicemetrics"
)

// metricsAddr checks the address of a metrics listener: host:port, or a
// bare port for 127.0.0.1:PORT. "" stays "" (no listener).
func metricsAddr(addr string) (string, error) {
	if addr == "" {
		return "", nil
	}
	addr = loopbackPort(addr)
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return "", fmt.Errorf("metrics address %q: want host:port, or a port alone for 127.0.0.1:PORT", addr)
	}
	return addr, nil
}

// serveDeviceMetrics serves d's metrics, /healthz and /readyz on addr
// (see [devicemetrics.Handler]) until the returned function is called.
// An address it cannot listen on is an error: the command ends.
func serveDeviceMetrics(addr string, d *device.Device, log *slog.Logger) (stop func(), err error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics: cannot listen on %s: %w; choose another address (--metrics, or metrics: in the config file), or stop what uses it", addr, err)
	}
	if tcp, ok := ln.Addr().(*net.TCPAddr); ok && !tcp.IP.IsLoopback() {
		log.Warn("metrics listening beyond loopback: anyone who can reach this address can read them", "addr", tcp.String())
	}
	srv := &http.Server{
		Handler:           devicemetrics.Handler(d),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics listener failed", "addr", addr, "err", err)
		}
	}()
	log.Info("serving metrics", "addr", "http://"+ln.Addr().String()+"/metrics")
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if srv.Shutdown(ctx) != nil {
			srv.Close()
		}
		<-done
	}, nil
}

// deviceMetricsAddr returns the metrics address of the device agent: the
// --metrics flag's, else the config file's, else "" (none).
func deviceMetricsAddr(o *deviceOptions, ds *deviceSetup) (string, error) {
	if o.metrics != "" {
		addr, err := metricsAddr(o.metrics)
		if err != nil {
			return "", fmt.Errorf("--metrics: %w", err)
		}
		return addr, nil
	}
	addr, err := metricsAddr(ds.file.Metrics)
	if err != nil {
		return "", fmt.Errorf("config %s: %w", ds.path, err)
	}
	return addr, nil
}
