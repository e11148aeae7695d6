//go:build !nometrics

package main

import (
	"log/slog"

	"github.com/burrow-tunnel/burrow/device"
	"github.com/burrow-tunnel/burrow/devicemetrics"
)

// serveDeviceMetrics serves d's metrics, /healthz and /readyz on addr
// (see [devicemetrics.Handler]) until the returned function is called.
func serveDeviceMetrics(addr string, d *device.Device, log *slog.Logger) (stop func(), err error) {
	return serveMetricsHTTP(addr, devicemetrics.Handler(d), log)
}
