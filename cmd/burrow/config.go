package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"

	"github.com/burrow-tunnel/burrow/device"
	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/internal/yamlstrict"
	"github.com/burrow-tunnel/burrow/paths"
)

// deviceFile is the YAML configuration of "burrow device".
type deviceFile struct {
	// Relay is the relay's host:port.
	Relay string `yaml:"relay"`
	// RelayID pins the relay's key; empty means a CA-signed relay
	// certificate, checked against the system roots.
	RelayID string `yaml:"relay_id"`
	// Identity is the device's key file, relative to the config file's
	// directory unless absolute; created if missing.
	Identity string `yaml:"identity"`
	// Services maps service names to the local addresses they are served on.
	Services map[string]string `yaml:"services"`
	// Clients maps client IDs to the services they may open ("*": all).
	Clients map[string][]string `yaml:"clients"`
}

// loadDeviceConfig reads and checks a device configuration file and returns
// the device Config it describes, logging to log.
func loadDeviceConfig(path string, log *slog.Logger) (device.Config, error) {
	fail := func(format string, args ...any) (device.Config, error) {
		return device.Config{}, fmt.Errorf("config %s: %s", path, fmt.Sprintf(format, args...))
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return device.Config{}, fmt.Errorf("config: %w", err)
	}
	var f deviceFile
	if err := yamlstrict.Decode(data, &f); err != nil {
		if errors.Is(err, yamlstrict.ErrEmpty) {
			return fail("the file is empty: it needs at least relay, relay_id and services")
		}
		return fail("%v", err)
	}
	if f.Relay == "" {
		return fail("relay is missing: set it to the relay's host:port")
	}
	if _, _, err := net.SplitHostPort(f.Relay); err != nil {
		return fail("relay %q: want host:port, as in relay.example.com:443", f.Relay)
	}
	var relayID identity.ID
	if f.RelayID != "" {
		if relayID, err = identity.ParseID(f.RelayID); err != nil {
			return fail("relay_id: %v", err)
		}
	}
	if len(f.Services) == 0 {
		return fail("services is empty: name at least one local service, as in \"http: 127.0.0.1:80\"")
	}
	clients := make(map[identity.ID][]string, len(f.Clients))
	for s, svcs := range f.Clients {
		id, err := identity.ParseID(s)
		if err != nil {
			return fail("clients: %v", err)
		}
		if len(svcs) == 0 {
			return fail("clients: %s has no services: list them, or [\"*\"] for all", s)
		}
		clients[id] = svcs
	}
	keyPath := f.Identity
	if keyPath == "" {
		dir, err := configDir()
		if err != nil {
			return fail("identity is missing and %v", err)
		}
		keyPath = filepath.Join(dir, "device.key")
	} else if !filepath.IsAbs(keyPath) {
		keyPath = filepath.Join(filepath.Dir(path), keyPath)
	}
	id, created, err := identity.LoadOrCreate(keyPath)
	if err != nil {
		return fail("identity: %v", err)
	}
	if created {
		log.Info("created device identity", "path", keyPath)
	}
	return device.Config{
		Identity: id,
		Relay:    paths.RelayConfig{Addr: f.Relay, ID: relayID},
		Services: f.Services,
		Clients:  clients,
		Logger:   log,
	}, nil
}
