package main

import (
	"log/slog"
	"reflect"
	"strings"

	"github.com/burrow-tunnel/burrow/device"
)

// reloadDevice reads the configuration file again, on SIGHUP, and puts
// what a running device can change in force: its services, roles and
// clients. It logs what it reloaded, what changed that only a restart
// applies, and, if the file no longer reads or checks, why nothing was
// reloaded (the device goes on as it was). runningMetrics is the address
// the agent serves metrics on ("" if none): a new one needs a restart.
func reloadDevice(o *deviceOptions, running device.Config, runningMetrics string, d *device.Device, log *slog.Logger) {
	path := o.configPath
	ds, err := readDeviceConfig(path)
	if err != nil {
		log.Error("SIGHUP: the configuration does not read; nothing reloaded, the device goes on as it was", "config", path, "err", err)
		return
	}
	cfg, err := ds.deviceConfig(log)
	if err != nil {
		log.Error("SIGHUP: the configuration does not check; nothing reloaded, the device goes on as it was", "config", path, "err", err)
		return
	}
	changed, err := d.Reload(device.Policy{Services: cfg.Services, Roles: cfg.Roles, Clients: cfg.Clients})
	if err != nil {
		log.Error("SIGHUP: the configuration does not check; nothing reloaded, the device goes on as it was", "config", path, "err", err)
		return
	}
	attrs := []any{"config", path, "reloaded", orNone(changed)}
	later := needRestart(running, cfg)
	if metrics, _ := deviceMetricsAddr(o, ds); metrics != runningMetrics {
		later = append(later, "metrics")
	}
	if len(later) > 0 {
		attrs = append(attrs, "restart_to_apply", strings.Join(later, ","))
		log.Warn("SIGHUP: configuration reloaded, but some changes apply only after a restart", attrs...)
		return
	}
	log.Info("SIGHUP: configuration reloaded", attrs...)
}

// needRestart names the settings that differ between the running
// configuration and cfg and that a running device cannot change.
func needRestart(running, cfg device.Config) []string {
	var out []string
	differ := func(name string, a, b any) {
		if !reflect.DeepEqual(a, b) {
			out = append(out, name)
		}
	}
	differ("identity", running.Identity.ID(), cfg.Identity.ID())
	differ("name", running.Name, cfg.Name)
	differ("relay", []any{running.Relay.Addr, running.RelayFallback}, []any{cfg.Relay.Addr, cfg.RelayFallback})
	differ("relay_id", running.Relay.ID, cfg.Relay.ID)
	differ("region", running.Region, cfg.Region)
	differ("enroll_token", running.EnrollToken, cfg.EnrollToken)
	differ("state", running.StateDir, cfg.StateDir)
	differ("direct", running.Direct, cfg.Direct)
	differ("tunnel limits", []any{running.TunnelRate, running.TunnelBurst}, []any{cfg.TunnelRate, cfg.TunnelBurst})
	return out
}

func orNone(s []string) string {
	if len(s) == 0 {
		return "nothing changed"
	}
	return strings.Join(s, ",")
}
