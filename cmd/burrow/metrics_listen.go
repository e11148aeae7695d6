package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
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
