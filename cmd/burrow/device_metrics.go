package main

import (
	"fmt"
	"log/slog"
	"net"

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
func serveDeviceMetrics(addr string, d *device.Device, log *slog.Logger) (stop func(), err error) {
	return serveMetricsHTTP(addr, devicemetrics.Handler(d), log)
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
