//go:build nometrics

package main

import (
	"errors"
	"log/slog"

	"github.com/burrow-tunnel/burrow/device"
	"github.com/burrow-tunnel/burrow/relay"
	"github.com/burrow-tunnel/burrow/relaydash"
)

// A build with -tags nometrics leaves out the Prometheus client and what
// it brings (about 2.4 MB of a stripped linux/arm binary), for devices
// whose flash is small; --metrics then fails at start.

var errNoMetrics = errors.New("this burrow was built without metrics (-tags nometrics): drop --metrics (or metrics: in the file), or build burrow without the tag")

func serveRelayMetrics(string, *relay.Server, func() error, relaydash.Config, *slog.Logger) (func(), error) {
	return nil, errNoMetrics
}

func serveDeviceMetrics(string, *device.Device, *slog.Logger) (func(), error) {
	return nil, errNoMetrics
}
