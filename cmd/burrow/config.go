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

	"go.yaml.in/yaml/v3"

	"github.com/burrow-tunnel/burrow/device"
	"github.com/burrow-tunnel/burrow/fleet"
	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/internal/yamlstrict"
	"github.com/burrow-tunnel/burrow/paths"
	"github.com/burrow-tunnel/burrow/relaylink"
)

//go:generate go test -update -run ^TestDeviceKeysDoc$

// deviceFile is the YAML configuration of "burrow device".
//
// Its field comments are the one description of the configuration keys:
// the README's table "Device configuration keys" and the list of keys in
// "burrow device --help" ([deviceKeysHelp]) are generated from them by
// go generate, and TestDeviceKeysDoc fails while either is out of date.
// Each comment reads "Field: meaning", or "Field (when it is required):
// meaning", and says what leaving the key out does; `code` is set as code
// in the README and plain in the help.
type deviceFile struct {
	// Relay (required): the relay's `host:port`, or a list of them,
	// tried in turn until one answers: relays of one fleet (`relay_id` is
	// then the fleet ID), or addresses of one relay. One relay of a fleet
	// is enough: the device learns the others from the fleet's map, keeps
	// to its home relay among them and moves to the next while home is
	// down.
	Relay addrList `yaml:"relay"`
	// RelayID (required unless `relay_ca`): the relay's ID, pinned: the device
	// attaches only to a relay that proves the key of this ID
	// (`burrow relay id` prints it). For a fleet of relays, the fleet ID
	// (`burrow fleet init` printed it): any relay the fleet's signed map
	// lists.
	RelayID string `yaml:"relay_id"`
	// RelayCA: `true` accepts, when `relay_id` is not set, a relay whose
	// certificate is CA-signed for its host, checked against the system
	// roots. Default `false`: it must be asked for, so that a forgotten
	// `relay_id` is an error, not a weaker check.
	RelayCA bool `yaml:"relay_ca"`
	// Region: the device's region among the fleet's relays (as `burrow
	// fleet add --region` named them): the relays of its region come
	// first. Default: none; every relay of the fleet alike.
	Region string `yaml:"region"`
	// EnrollToken (for a relay that has not enrolled the device yet): an
	// enrollment token (`burrow relay token create`); sent until the relay
	// admits the device, then never (the agent logs that it can be
	// deleted). While it is there, keep the file `chmod 600`: the agent
	// warns otherwise. Default: none.
	EnrollToken string `yaml:"enroll_token"`
	// Name: what the device calls itself in invites (1–63 of
	// `a-z 0-9 - _ .`). Default: none; a client that pairs knows the device
	// by its short ID unless told a name.
	Name string `yaml:"name"`
	// Identity: the device's key file, created if missing; a relative path
	// is relative to this file's directory (as for `state` and
	// `admin_socket`). Default: `burrow/device.key` in the user's config
	// directory.
	Identity string `yaml:"identity"`
	// State: the directory of paired users and pending invites. Default:
	// `state` beside the identity file.
	State string `yaml:"state"`
	// AdminSocket: the Unix socket of the running agent's admin API, which
	// `burrow device invite`, `users`, `revoke` and `status` use. Default:
	// `admin.sock` in the state directory.
	AdminSocket string `yaml:"admin_socket"`
	// Metrics: the address to serve Prometheus metrics on (`/metrics`),
	// with `/healthz` and `/readyz` (ready while attached to the relay):
	// `host:port`, or a port alone for `127.0.0.1:PORT`. `--metrics`
	// overrides it. Default: none, no metrics listener.
	Metrics string `yaml:"metrics"`
	// Services (required): service name (1–63 of `a-z 0-9 - _ .`) → the
	// `host:port` it is served on; these are the only addresses the device
	// ever dials.
	Services map[string]string `yaml:"services"`
	// Roles (to pair; this or `clients`): role name → the services it grants,
	// `"*"` for all; a paired client has a role. Default: none, so no
	// invites.
	Roles map[string][]string `yaml:"roles"`
	// Clients (this or `roles`): client ID → the services it may open, `"*"`
	// for all: users fixed by the file, without pairing. Default: none.
	Clients map[string][]string `yaml:"clients"`
	// Direct: `false` keeps every session on the relay, as `--no-direct`
	// does. Default `true`: a session moves to a direct UDP path when hole
	// punching finds one.
	Direct *bool `yaml:"direct"`
	// DirectPort: the UDP port for direct paths. Default `0`: any free one.
	DirectPort int `yaml:"direct_port"`
	// DirectAddrs: the IP addresses offered to clients for direct paths,
	// instead of the interfaces' (a port-forwarded public address, say).
	// Default: the interfaces' addresses.
	DirectAddrs []string `yaml:"direct_addrs"`
	// RelayUDP: `false` keeps every session off the relay's UDP port, as
	// `--no-relay-udp` does: what goes through the relay goes over its TCP
	// link. Default `true`: where the relay forwards datagrams, a session
	// that has no direct path moves onto its UDP port.
	RelayUDP *bool `yaml:"relay_udp"`
	// LAN: `false` keeps the device off the LAN, as `--no-lan` does: it is
	// not announced there and takes no session that starts there. Default
	// `true`: it answers paired clients' mDNS queries on the LAN with its
	// UDP port, under a tag that changes every 10 minutes and that only
	// those who know its ID can compute, and takes sessions from its LAN
	// without the relay, authorized as every other.
	LAN *bool `yaml:"lan"`
	// LANInterface: the one network interface to announce the device on
	// (`wlan0`, say), for a device with an interface on a network that is
	// not its owner's. Default: every interface that is up, can multicast
	// and is not loopback.
	LANInterface string `yaml:"lan_interface"`
	// TunnelRate: the tunnels one client may open per second; more are
	// refused with "too many tunnels too fast". Default `0`: 100.
	TunnelRate float64 `yaml:"tunnel_rate"`
	// TunnelBurst: the tunnels one client may open in a burst, before
	// `tunnel_rate` holds it back. Default `0`: 1,000.
	TunnelBurst int `yaml:"tunnel_burst"`
	// ReattachSpread: after the relay dropped every agent at once (it
	// crashed or restarted), the device returns at a random moment within
	// this, so that a relay with thousands of devices does not get them
	// all back in one second. Default `15s`; `0s`: at once.
	ReattachSpread *time.Duration `yaml:"reattach_spread"`
}

// addrList is one address or a list of them: a YAML string or sequence.
type addrList []string

func (l *addrList) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode {
		var s string
		if err := n.Decode(&s); err != nil {
			return err
		}
		*l = addrList{s}
		if s == "" {
			*l = nil
		}
		return nil
	}
	var list []string
	if err := n.Decode(&list); err != nil {
		return err
	}
	*l = list
	return nil
}

// directOptions checks an agent's UDP settings: direct (default on, and
// off with noDirect), relay_udp (default on), the UDP port and the
// addresses to offer.
func directOptions(direct, relayUDP *bool, port int, addrs []string, noDirect bool) (paths.DirectOptions, error) {
	o := paths.DirectOptions{Disable: noDirect || direct != nil && !*direct, NoRelayUDP: relayUDP != nil && !*relayUDP, Port: port}
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
	if len(f.Relay) == 0 {
		return fail("relay is missing: set it to the relay's host:port, or a list of them")
	}
	for _, addr := range f.Relay {
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return fail("relay %q: want host:port, as in relay.example.com:443", addr)
		}
	}
	if len(f.Region) > fleet.MaxRegionLen {
		return fail("region %q: at most %d bytes", f.Region, fleet.MaxRegionLen)
	}
	if f.RelayID != "" {
		if _, err := identity.ParseID(f.RelayID); err != nil {
			return fail("relay_id: %v", err)
		}
	} else if !f.RelayCA {
		return fail("relay_id is missing: pin the relay with its ID (\"burrow relay id --data DIR\" prints it), " +
			"or set relay_ca: true if the relay serves a CA-signed certificate")
	}
	if _, err := directOptions(f.Direct, f.RelayUDP, f.DirectPort, f.DirectAddrs, false); err != nil {
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
	if _, err := metricsAddr(f.Metrics); err != nil {
		return fail("%v", err)
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
		Identity:      id,
		Name:          f.Name,
		Relay:         relaylink.RelayConfig{Addr: f.Relay[0]},
		RelayFallback: f.Relay[1:],
		Region:        f.Region,
		EnrollToken:   f.EnrollToken,
		Services:      f.Services,
		Roles:         f.Roles,
		Clients:       make(map[identity.ID][]string, len(f.Clients)),
		StateDir:      ds.stateDir,
		Logger:        log,
	}
	cfg.OnEnrolled = func() {
		log.Info("admitted by the relay (enrolled, or listed there): enroll_token is no longer needed (it is not sent again); delete it from "+ds.path, "config", ds.path)
	}
	cfg.Direct, _ = directOptions(f.Direct, f.RelayUDP, f.DirectPort, f.DirectAddrs, false)
	cfg.NoLAN = f.LAN != nil && !*f.LAN
	cfg.LANInterface = f.LANInterface
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
