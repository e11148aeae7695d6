package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"
)

// serveMetricsHTTP serves h on addr, the metrics listener of a relay or a
// device agent (--metrics; a bare port is 127.0.0.1:PORT), until the
// returned function is called. It is plain HTTP without credentials, so
// it warns when it listens beyond loopback. An address it cannot listen
// on is an error that says what to do: the command ends.
func serveMetricsHTTP(addr string, h http.Handler, log *slog.Logger) (stop func(), err error) {
	ln, err := net.Listen("tcp", loopbackPort(addr))
	if err != nil {
		return nil, fmt.Errorf("metrics: cannot listen on %s: %w; choose another address (--metrics; a bare port listens on 127.0.0.1), or stop what uses it", addr, err)
	}
	hs := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: time.Minute,
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelDebug)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := hs.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Warn("metrics listener failed", "addr", ln.Addr().String(), "err", err)
		}
	}()
	log.Info("metrics listening", "addr", ln.Addr().String())
	if tcp, ok := ln.Addr().(*net.TCPAddr); ok && !tcp.IP.IsLoopback() {
		log.Warn("metrics listener is beyond loopback, in plain HTTP without credentials: keep it on a private network", "addr", ln.Addr().String())
	}
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if hs.Shutdown(ctx) != nil {
			hs.Close()
		}
		<-done
	}, nil
}
