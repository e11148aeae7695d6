package main

import (
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/burrow-tunnel/burrow/client"
	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/internal/testing/tunneltest"
)

func writeConfig(t *testing.T, body string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "device.yaml")
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestLoadDeviceConfig(t *testing.T) {
	relayID := tunneltest.NewIdentity(t).ID()
	clientID := tunneltest.NewIdentity(t).ID()
	path := writeConfig(t, `
relay: relay.example.com:443
relay_id: `+relayID.String()+`
identity: keys/device.key
services:
  http: 127.0.0.1:80
  rtsp: 127.0.0.1:554
clients:
  `+clientID.String()+`: [rtsp]
direct: false
direct_port: 41641
direct_addrs: [192.0.2.10, "2001:db8::10"]
relay_udp: false
lan: false
lan_interface: wlan0
reattach_spread: 1m30s
`)
	cfg, err := loadDeviceConfig(path, tunneltest.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	if d := cfg.Direct; !d.Disable || !d.NoRelayUDP || d.Port != 41641 || len(d.Addrs) != 2 || d.Addrs[1] != netip.MustParseAddr("2001:db8::10") {
		t.Fatalf("direct %+v", d)
	}
	if !cfg.NoLAN || cfg.LANInterface != "wlan0" {
		t.Fatalf("lan: false, lan_interface: wlan0 gave off the LAN %v, interface %q", cfg.NoLAN, cfg.LANInterface)
	}
	if cfg.ReattachSpread != 90*time.Second {
		t.Fatalf("reattach spread %v", cfg.ReattachSpread)
	}
	if cfg.Relay.Addr != "relay.example.com:443" || cfg.Relay.ID != relayID {
		t.Fatalf("relay %+v", cfg.Relay)
	}
	if cfg.Services["rtsp"] != "127.0.0.1:554" || len(cfg.Clients[clientID]) != 1 {
		t.Fatalf("services %v clients %v", cfg.Services, cfg.Clients)
	}
	// A relative identity path is relative to the config file, and the
	// key is created there.
	key := filepath.Join(filepath.Dir(path), "keys", "device.key")
	id, err := identity.Load(key)
	if err != nil || id.ID() != cfg.Identity.ID() {
		t.Fatalf("identity at %s: %v", key, err)
	}
}

// TestLoadDeviceConfigRelayCA: relay_ca, asked for, leaves the relay ID
// zero, so the relay's certificate is checked against the CA roots.
func TestLoadDeviceConfigRelayCA(t *testing.T) {
	path := writeConfig(t, "relay: relay.example.com:443\nrelay_ca: true\nidentity: d.key\n"+
		"services:\n  http: 127.0.0.1:80\nroles:\n  viewer: [http]\n")
	cfg, err := loadDeviceConfig(path, tunneltest.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	if !cfg.Relay.ID.IsZero() || cfg.Relay.Addr != "relay.example.com:443" {
		t.Fatalf("relay %+v", cfg.Relay)
	}
}

// TestLoadDeviceConfigRelayList: relay takes a list of addresses too (the
// first is the relay, the others its fallbacks, all pinned by relay_id),
// and region passes through.
func TestLoadDeviceConfigRelayList(t *testing.T) {
	fleetID := tunneltest.NewIdentity(t).ID()
	for _, list := range []string{
		"relay:\n  - a.example.com:443\n  - b.example.com:443\n  - 192.0.2.7:8443\n",
		"relay: [a.example.com:443, b.example.com:443, \"192.0.2.7:8443\"]\n",
	} {
		path := writeConfig(t, list+"relay_id: "+fleetID.String()+"\nregion: eu\nidentity: d.key\n"+
			"services:\n  http: 127.0.0.1:80\nroles:\n  viewer: [http]\n")
		cfg, err := loadDeviceConfig(path, tunneltest.Logger(t))
		if err != nil {
			t.Fatalf("%q: %v", list, err)
		}
		if cfg.Relay.Addr != "a.example.com:443" || cfg.Relay.ID != fleetID ||
			!slices.Equal(cfg.RelayFallback, []string{"b.example.com:443", "192.0.2.7:8443"}) || cfg.Region != "eu" {
			t.Fatalf("%q: relay %+v, fallback %q, region %q", list, cfg.Relay, cfg.RelayFallback, cfg.Region)
		}
	}
}

func TestLoadDeviceConfigErrors(t *testing.T) {
	relayID := tunneltest.NewIdentity(t).ID().String()
	client := tunneltest.NewIdentity(t).ID().String()
	base := "relay: r.example.com:443\nrelay_id: " + relayID + "\nidentity: d.key\n"
	tests := []struct {
		name, body, want string
	}{
		{"unknown key", base + "services:\n  http: 127.0.0.1:80\nclient:\n  x: [http]\n", `line 6: unknown key "client"`},
		{"unknown key under a section", "relay: r:1\nrelay_id: " + relayID + "\nservices: {http: \"127.0.0.1:80\"}\nclients: {}\nextra: 1\n", `line 5: unknown key "extra"`},
		{"empty file", "", "empty"},
		{"missing relay", "services:\n  http: 127.0.0.1:80\n", "relay is missing"},
		{"missing relay id", "relay: r:443\nservices:\n  http: 127.0.0.1:80\nclients:\n  " + client + ": [http]\n",
			"relay_id is missing: pin the relay with its ID"},
		{"relay_ca not a bool", "relay: r:443\nrelay_ca: yes please\nservices:\n  http: 127.0.0.1:80\n", "relay_ca"},
		{"no clients, no roles", base + "services:\n  http: 127.0.0.1:80\n", "clients and roles are both empty"},
		{"empty clients, no roles", base + "services:\n  http: 127.0.0.1:80\nclients: {}\n", "clients and roles are both empty"},
		{"relay without port", "relay: r.example.com\nrelay_id: " + relayID + "\nservices:\n  http: 127.0.0.1:80\n", "want host:port"},
		{"relay list with one without port", "relay: [r:443, r2]\nrelay_id: " + relayID + "\nservices:\n  http: 127.0.0.1:80\n", `relay "r2": want host:port`},
		{"empty relay list", "relay: []\nrelay_id: " + relayID + "\nservices:\n  http: 127.0.0.1:80\n", "relay is missing"},
		{"relay a mapping", "relay: {a: 1}\nrelay_id: " + relayID + "\nservices:\n  http: 127.0.0.1:80\n", "relay"},
		{"bad relay id", "relay: r:443\nrelay_id: nope\nservices:\n  http: 127.0.0.1:80\n", "relay_id"},
		{"no services", base, "services is empty"},
		{"bad client id", base + "services:\n  http: 127.0.0.1:80\nclients:\n  alice: [http]\n", `clients: invalid ID "alice"`},
		{"client without services", base + "services:\n  http: 127.0.0.1:80\nclients:\n  " + client + ": []\n", "has no services"},
		{"not yaml", "relay: [\n", "config"},
		{"bad direct address", base + "services:\n  http: 127.0.0.1:80\ndirect_addrs: [home]\n", `direct_addrs: "home" is not an IP address`},
		{"bad direct port", base + "services:\n  http: 127.0.0.1:80\ndirect_port: 70000\n", "direct_port 70000"},
		{"bad metrics address", base + "services:\n  http: 127.0.0.1:80\nroles: {v: [http]}\nmetrics: localhost\n", `metrics address "localhost": want host:port`},
		{"negative reattach spread", base + "services:\n  http: 127.0.0.1:80\nroles: {v: [http]}\nreattach_spread: -1s\n", "reattach_spread must not be negative"},
		{"reattach spread not a duration", base + "services:\n  http: 127.0.0.1:80\nroles: {v: [http]}\nreattach_spread: soon\n", "reattach_spread"},
		{"direct not a bool", base + "services:\n  http: 127.0.0.1:80\ndirect: sometimes\n", "direct"},
		{"relay_udp not a bool", base + "services:\n  http: 127.0.0.1:80\nrelay_udp: sometimes\n", "relay_udp"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := loadDeviceConfig(writeConfig(t, tc.body), tunneltest.Logger(t))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to contain %q", err, tc.want)
			}
		})
	}
}

// FuzzDeviceConfig: no device configuration file, however malformed,
// makes parsing panic, and what parses names a relay and services.
func FuzzDeviceConfig(f *testing.F) {
	relayID, clientID := tunneltest.NewIdentity(f).ID().String(), tunneltest.NewIdentity(f).ID().String()
	f.Add([]byte(`name: front-door
relay: relay.example.com:443
relay_id: ` + relayID + `
enroll_token: enroll-x
identity: /var/lib/burrow/device.key
state: /var/lib/burrow/state
services:
  http: 127.0.0.1:80
  rtsp: 127.0.0.1:554
roles:
  viewer: [rtsp]
  admin: ["*"]
clients:
  ` + clientID + `: [rtsp]
direct: false
direct_port: 41641
direct_addrs: [192.0.2.10, "2001:db8::10"]
`))
	f.Add([]byte("relay: r:1\nrelay_ca: true\nservices: {http: \"127.0.0.1:80\"}\nroles: {viewer: [http]}\n"))
	f.Add([]byte("relay: r:1\nservices: {http: \"127.0.0.1:80\"}\n"))
	f.Add([]byte("relay: [\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		ds, err := parseDeviceConfig("fuzz.yaml", data)
		if err != nil {
			return
		}
		f := ds.file
		if len(f.Relay) == 0 || len(f.Services) == 0 || ds.keyPath == "" {
			t.Fatalf("accepted without relay, services or identity: %+v", ds)
		}
		if f.RelayID == "" && !f.RelayCA || len(f.Clients) == 0 && len(f.Roles) == 0 {
			t.Fatalf("accepted an unpinned relay or a device no one may reach: %+v", f)
		}
	})
}

// TestTokenReadable: a configuration is flagged when it holds an
// enrollment token that users other than its owner may read, and only
// then.
func TestTokenReadable(t *testing.T) {
	relayID := tunneltest.NewIdentity(t).ID().String()
	clientID := tunneltest.NewIdentity(t).ID().String()
	base := "relay: r:443\nrelay_id: " + relayID + "\nidentity: d.key\nservices:\n  http: 127.0.0.1:80\nclients:\n  " + clientID + ": [http]\n"
	tests := []struct {
		name  string
		token bool
		mode  os.FileMode
		want  bool
	}{
		{"token, 0600", true, 0o600, false},
		{"token, 0640", true, 0o640, true},
		{"token, 0604", true, 0o604, true},
		{"token, 0644", true, 0o644, true},
		{"no token, 0644", false, 0o644, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			body := base
			if tc.token {
				body += "enroll_token: enroll-abc\n"
			}
			path := writeConfig(t, body)
			os.Chmod(path, tc.mode)
			ds, err := readDeviceConfig(path)
			if err != nil {
				t.Fatal(err)
			}
			if mode, got := ds.tokenReadable(); got != tc.want || got && mode != tc.mode {
				t.Fatalf("tokenReadable() = %04o, %v; want %v", mode, got, tc.want)
			}
		})
	}
}

// TestConnectConfigLAN: lan: false in a file of forwards keeps the client
// off the LAN; without it, the client looks there too.
func TestConnectConfigLAN(t *testing.T) {
	home := client.Home{Dir: t.TempDir()}
	if err := home.SaveDevice(client.KnownDevice{Name: "cam1", ID: tunneltest.NewIdentity(t).ID(),
		Relay: "relay.example.com:443", RelayID: tunneltest.NewIdentity(t).ID()}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		body  string
		noLAN bool
	}{
		{"forwards:\n  cam1/http: 127.0.0.1:8080\n", false},
		{"forwards:\n  cam1/http: 127.0.0.1:8080\nlan: false\n", true},
	} {
		_, cp, err := readConnectConfig(writeConfig(t, tc.body), home)
		if err != nil {
			t.Fatal(err)
		}
		if cp.noLAN != tc.noLAN {
			t.Errorf("%q: off the LAN %v, want %v", tc.body, cp.noLAN, tc.noLAN)
		}
	}
}
