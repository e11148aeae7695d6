package main

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"time"

	"github.com/burrow-tunnel/burrow/device"
	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/internal/yamlstrict"
	"github.com/burrow-tunnel/burrow/paths"
	"github.com/burrow-tunnel/burrow/relaylink"
)

// deviceFile is the YAML configuration of "burrow device".
type deviceFile struct {
	// Name is what the device calls itself in invites.
	Name string `yaml:"name"`
	// Relay is the relay's host:port.
	Relay string `yaml:"relay"`
	// RelayID pins the relay's key. Required unless RelayCA.
	RelayID string `yaml:"relay_id"`
	// RelayCA trusts a CA-signed relay certificate, checked against the
	// system roots, instead of (or besides) a pinned relay ID. It must be
	// asked for: a forgotten relay_id is an error, not a weaker check.
	RelayCA bool `yaml:"relay_ca"`
	// EnrollToken enrolls the device on a relay that does not know it yet.
	EnrollToken string `yaml:"enroll_token"`
	// Identity is the device's key file, relative to the config file's
	// directory unless absolute; created if missing.
	Identity string `yaml:"identity"`
	// State is the directory of paired users and pending invites; by
	// default "state" beside the identity file.
	State string `yaml:"state"`
	// AdminSocket is the admin API's Unix socket; by default admin.sock in
	// the state directory.
	AdminSocket string `yaml:"admin_socket"`
	// Services maps service names to the local addresses they are served on.
	Services map[string]string `yaml:"services"`
	// Roles maps role names to the services they grant ("*": all).
	Roles map[string][]string `yaml:"roles"`
	// Clients maps client IDs to the services they may open ("*": all).
	Clients map[string][]string `yaml:"clients"`
	// Direct, DirectPort and DirectAddrs configure direct paths.
	Direct      *bool    `yaml:"direct"`
	DirectPort  int      `yaml:"direct_port"`
	DirectAddrs []string `yaml:"direct_addrs"`
	// TunnelRate and TunnelBurst bound the tunnels one client may open per
	// second.
	TunnelRate  float64 `yaml:"tunnel_rate"`
	TunnelBurst int     `yaml:"tunnel_burst"`
	// ReattachSpread spreads the device's return to a relay that dropped
	// everyone at once; 0s turns it off. Default: device.DefaultReattachSpread.
	ReattachSpread *time.Duration `yaml:"reattach_spread"`
}

// directOptions checks an agent's direct-path settings: direct (default
// on, and off with noDirect), the UDP port and the addresses to offer.
func directOptions(direct *bool, port int, addrs []string, noDirect bool) (paths.DirectOptions, error) {
	o := paths.DirectOptions{Disable: noDirect || direct != nil && !*direct, Port: port}
	if port < 0 || port > 65535 {
		return o, fmt.Errorf("direct_port %d: want 0 (any) to 65535", port)
	}
	for _, a := range addrs {
		ip, err := netip.ParseAddr(a)
		if err != nil {
			return o, fmt.Errorf("direct_addrs: %q is not an IP address", a)
		}
		o.Addrs = append(o.Addrs, ip)
	}
	return o, nil
}

// deviceSetup is a parsed device configuration file.
type deviceSetup struct {
	path        string
	file        deviceFile
	keyPath     string
	stateDir    string
	adminSocket string
}

// readDeviceConfig reads and checks a device configuration file without
// touching anything it names.
func readDeviceConfig(path string) (*deviceSetup, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	return parseDeviceConfig(path, data)
}

// parseDeviceConfig checks the contents of the device configuration file
// at path.
func parseDeviceConfig(path string, data []byte) (*deviceSetup, error) {
	fail := func(format string, args ...any) (*deviceSetup, error) {
		return nil, fmt.Errorf("config %s: %s", path, fmt.Sprintf(format, args...))
	}
	ds := &deviceSetup{path: path}
	f := &ds.file
	if err := yamlstrict.Decode(data, f); err != nil {
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
	if f.RelayID != "" {
		if _, err := identity.ParseID(f.RelayID); err != nil {
			return fail("relay_id: %v", err)
		}
	} else if !f.RelayCA {
		return fail("relay_id is missing: pin the relay with its ID (\"burrow relay id --data DIR\" prints it), " +
			"or set relay_ca: true if the relay serves a CA-signed certificate")
	}
	if _, err := directOptions(f.Direct, f.DirectPort, f.DirectAddrs, false); err != nil {
		return fail("%v", err)
	}
	if f.TunnelRate < 0 || f.TunnelBurst < 0 {
		return fail("tunnel_rate and tunnel_burst must not be negative")
	}
	if f.ReattachSpread != nil && *f.ReattachSpread < 0 {
		return fail("reattach_spread must not be negative")
	}
	if len(f.Services) == 0 {
		return fail("services is empty: name at least one local service, as in \"http: 127.0.0.1:80\"")
	}
	for s, svcs := range f.Clients {
		if _, err := identity.ParseID(s); err != nil {
			return fail("clients: %v", err)
		}
		if len(svcs) == 0 {
			return fail("clients: %s has no services: list them, or [\"*\"] for all", s)
		}
	}
	if len(f.Clients) == 0 && len(f.Roles) == 0 {
		return fail("clients and roles are both empty: no one could ever reach this device; " +
			"list client IDs under clients, or define roles and pair users with \"burrow device invite\"")
	}
	for r, svcs := range f.Roles {
		if len(svcs) == 0 {
			return fail("roles: %s has no services: list them, or [\"*\"] for all", r)
		}
	}
	rel := func(p string) string {
		if p != "" && !filepath.IsAbs(p) {
			return filepath.Join(filepath.Dir(path), p)
		}
		return p
	}
	ds.keyPath = rel(f.Identity)
	if ds.keyPath == "" {
		dir, err := configDir()
		if err != nil {
			return fail("identity is missing and %v", err)
		}
		ds.keyPath = filepath.Join(dir, "device.key")
	}
	ds.stateDir = rel(f.State)
	if ds.stateDir == "" {
		ds.stateDir = filepath.Join(filepath.Dir(ds.keyPath), "state")
	}
	ds.adminSocket = rel(f.AdminSocket)
	if ds.adminSocket == "" {
		ds.adminSocket = filepath.Join(ds.stateDir, "admin.sock")
	}
	return ds, nil
}

// deviceConfig returns the device Config the file describes, loading or
// creating the identity.
func (ds *deviceSetup) deviceConfig(log *slog.Logger) (device.Config, error) {
	f := ds.file
	id, created, err := identity.LoadOrCreate(ds.keyPath)
	if err != nil {
		return device.Config{}, fmt.Errorf("config %s: identity: %w", ds.path, err)
	}
	if created {
		log.Info("created device identity", "path", ds.keyPath)
	}
	cfg := device.Config{
		Identity:    id,
		Name:        f.Name,
		Relay:       relaylink.RelayConfig{Addr: f.Relay},
		EnrollToken: f.EnrollToken,
		Services:    f.Services,
		Roles:       f.Roles,
		Clients:     make(map[identity.ID][]string, len(f.Clients)),
		StateDir:    ds.stateDir,
		Logger:      log,
	}
	cfg.OnEnrolled = func() {
		log.Info("admitted by the relay (enrolled, or listed there): enroll_token is no longer needed (it is not sent again); delete it from "+ds.path, "config", ds.path)
	}
	cfg.Direct, _ = directOptions(f.Direct, f.DirectPort, f.DirectAddrs, false)
	cfg.TunnelRate, cfg.TunnelBurst = f.TunnelRate, f.TunnelBurst
	if f.ReattachSpread != nil {
		cfg.ReattachSpread = *f.ReattachSpread
		if cfg.ReattachSpread == 0 {
			cfg.ReattachSpread = -1 // asked for none
		}
	}
	if f.RelayID != "" {
		cfg.Relay.ID, _ = identity.ParseID(f.RelayID)
	}
	for s, svcs := range f.Clients {
		id, _ := identity.ParseID(s)
		cfg.Clients[id] = svcs
	}
	return cfg, nil
}

// tokenReadable returns the mode of the configuration file when it holds
// an enrollment token and users other than its owner may read it.
func (ds *deviceSetup) tokenReadable() (fs.FileMode, bool) {
	if ds.file.EnrollToken == "" || runtime.GOOS == "windows" {
		return 0, false
	}
	fi, err := os.Stat(ds.path)
	if err != nil || fi.Mode().Perm()&0o044 == 0 {
		return 0, false
	}
	return fi.Mode().Perm(), true
}

// loadDeviceConfig reads a device configuration file and returns the
// device Config it describes.
func loadDeviceConfig(path string, log *slog.Logger) (device.Config, error) {
	ds, err := readDeviceConfig(path)
	if err != nil {
		return device.Config{}, err
	}
	return ds.deviceConfig(log)
}
