package main

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// A jsonShape names the keys a --json object must have and the JSON type
// of each: "string", "number", "bool", "array", "object", "time" (an RFC
// 3339 string); a type ending in "?" may also be null.
type jsonShape map[string]string

// parseJSON parses out as one JSON document and returns it.
func parseJSON(t *testing.T, what, out string) any {
	t.Helper()
	dec := json.NewDecoder(strings.NewReader(out))
	var v any
	if err := dec.Decode(&v); err != nil {
		t.Fatalf("%s: stdout is not JSON (%v): %q", what, err, out)
	}
	if dec.More() {
		t.Fatalf("%s: more than one JSON document on stdout: %q", what, out)
	}
	return v
}

// checkShape checks that object v has every key of shape, of its type.
func checkShape(t *testing.T, what string, v any, shape jsonShape) map[string]any {
	t.Helper()
	m, ok := v.(map[string]any)
	if !ok {
		t.Fatalf("%s: %T, want a JSON object", what, v)
	}
	for key, typ := range shape {
		val, ok := m[key]
		if !ok {
			t.Errorf("%s: no key %q in %v", what, key, m)
			continue
		}
		nullable := strings.HasSuffix(typ, "?")
		typ = strings.TrimSuffix(typ, "?")
		if val == nil {
			if !nullable {
				t.Errorf("%s: %s is null, want a %s", what, key, typ)
			}
			continue
		}
		var good bool
		switch typ {
		case "string":
			_, good = val.(string)
		case "time":
			s, _ := val.(string)
			_, err := time.Parse(time.RFC3339Nano, s)
			good = err == nil
		case "number":
			_, good = val.(float64)
		case "bool":
			_, good = val.(bool)
		case "array":
			_, good = val.([]any)
		case "object":
			_, good = val.(map[string]any)
		default:
			t.Fatalf("bad shape type %q", typ)
		}
		if !good {
			t.Errorf("%s: %s = %#v, want a %s", what, key, val, typ)
		}
	}
	return m
}

// checkArray checks that v is an array of n objects of shape.
func checkArray(t *testing.T, what string, v any, n int, shape jsonShape) []map[string]any {
	t.Helper()
	a, ok := v.([]any)
	if !ok || len(a) != n {
		t.Fatalf("%s: %#v, want an array of %d", what, v, n)
	}
	var out []map[string]any
	for _, e := range a {
		out = append(out, checkShape(t, what, e, shape))
	}
	return out
}

// TestBinaryJSON: with --json, devices, device users, device status and
// ping print one JSON document of the fields docs/json.md lists (device
// invites and relay devices: TestBinaryDeviceInvites,
// TestBinaryRelayDeviceNames); errors still go to stderr, with nothing
// on stdout.
func TestBinaryJSON(t *testing.T) {
	invite, cfg := pairingDeviceConfig(t)
	home := filepath.Join(t.TempDir(), "home")
	if out := mustRun(t, "devices", "--home", home, "--json"); strings.TrimSpace(out) != "[]" {
		t.Fatalf("devices --json with none: %q, want []", out)
	}
	if _, out, stderr, err := runPair(t, invite()+"\n", "--name", "cam1", "--home", home); err != nil {
		t.Fatalf("pair: %q %q %v", out, stderr, err)
	}

	out := mustRun(t, "devices", "--home", home, "--json")
	devs := checkArray(t, "devices --json", parseJSON(t, "devices --json", out), 1, jsonShape{
		"name": "string", "id": "string", "relay": "string", "relay_id": "string", "role": "string",
		"services": "array", "paired": "time"})
	devID := devs[0]["id"].(string)
	if devs[0]["name"] != "cam1" || devs[0]["role"] != "viewer" || len(devID) != len(newID(t).String()) {
		t.Errorf("devices --json: %v", devs[0])
	}

	out = mustRun(t, "ping", "cam1", "--home", home, "--no-direct", "--no-relay-udp", "--count", "2", "--interval", "10ms", "--json")
	p := checkShape(t, "ping --json", parseJSON(t, "ping --json", out), jsonShape{
		"device": "string", "device_id": "string", "relay": "string", "sent": "number", "answered": "number",
		"pings": "array", "rtt_min_ms": "number?", "rtt_avg_ms": "number?", "rtt_max_ms": "number?"})
	if p["device"] != "cam1" || p["device_id"] != devID || p["sent"] != 2.0 || p["answered"] != 2.0 || p["rtt_avg_ms"] == nil {
		t.Errorf("ping --json: %v", p)
	}
	for _, seq := range checkArray(t, "ping --json pings", p["pings"], 2, jsonShape{
		"seq": "number", "rtt_ms": "number?", "path": "string", "error": "string"}) {
		if seq["path"] != "relay" || seq["rtt_ms"] == nil || seq["error"] != "" {
			t.Errorf("ping --json: %v", seq)
		}
	}

	// Interrupted, ping --json still prints its one document: the pings
	// sent so far.
	cmd := exec.Command(binary(t), "ping", "cam1", "--home", home, "--no-direct", "--count", "1000", "--interval", "100ms", "--json", "--no-lan")
	var stdout bytes.Buffer
	cmd.Stdout = &stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	cmd.Process.Signal(os.Interrupt)
	if err := cmd.Wait(); err != nil {
		t.Errorf("ping --json interrupted: %v, want exit status 0", err)
	}
	p = checkShape(t, "ping --json interrupted", parseJSON(t, "ping --json interrupted", stdout.String()), jsonShape{
		"device": "string", "device_id": "string", "relay": "string", "sent": "number", "answered": "number",
		"pings": "array", "rtt_min_ms": "number?", "rtt_avg_ms": "number?", "rtt_max_ms": "number?"})
	if sent := p["sent"].(float64); sent >= 1000 || int(sent) != len(p["pings"].([]any)) {
		t.Errorf("ping --json interrupted: %v", p)
	}

	out = mustRun(t, "device", "users", "--config", cfg, "--json")
	us := checkArray(t, "device users --json", parseJSON(t, "device users --json", out), 1, jsonShape{
		"name": "string", "id": "string", "role": "string", "services": "array", "from_config": "bool",
		"paired": "time?", "last_seen": "time?"})
	if us[0]["role"] != "viewer" || us[0]["from_config"] != false || us[0]["paired"] == nil {
		t.Errorf("device users --json: %v", us[0])
	}

	// A session open while the status is read: connect's.
	conn := start(t, "connect", "connect", "cam1", "http", "--home", home, "--no-direct", "--no-relay-udp")
	m, _ := conn.waitFor(regexp.MustCompile(`^listening on (\S+)$`), 0, 10*time.Second)
	if body, err := get(t, m[1]); err != nil || body != "camera admin page" {
		t.Fatalf("through the tunnel: %q, %v", body, err)
	}
	out = mustRun(t, "device", "status", "--config", cfg, "--json")
	st := checkShape(t, "device status --json", parseJSON(t, "device status --json", out), jsonShape{
		"relay": "object", "lan": "string", "state_error": "string", "revocations_not_saved": "array", "sessions": "array"})
	if st["lan"] != "off" {
		t.Errorf("device status --json: lan %v of a device started with --no-lan, want off", st["lan"])
	}
	rl := checkShape(t, "device status --json relay", st["relay"], jsonShape{
		"address": "string", "attached": "bool", "draining": "bool", "relay_id": "string", "since": "time",
		"observed_addr": "string", "rtt_ms": "number", "error": "string"})
	if rl["attached"] != true || rl["relay_id"] == "" {
		t.Errorf("device status --json: relay %v", rl)
	}
	ss := checkArray(t, "device status --json sessions", st["sessions"], 1, jsonShape{"client": "string", "name": "string",
		"since": "time", "path": "string", "rtt_ms": "number", "tunnels": "number", "tunnels_total": "number"})
	if ss[0]["client"] != us[0]["id"] || ss[0]["path"] != "relay" || ss[0]["tunnels_total"] != 1.0 {
		t.Errorf("device status --json: session %v", ss[0])
	}

	// An error: stdout stays empty; stderr says why.
	other := filepath.Join(t.TempDir(), "none.yaml")
	os.WriteFile(other, []byte("relay: 127.0.0.1:1\nrelay_id: "+devID+"\nidentity: x.key\nstate: st\nservices:\n  http: 127.0.0.1:1\nroles:\n  viewer: [http]\n"), 0o600)
	out, stderr, err := run(t, "device", "status", "--config", other, "--json")
	if err == nil || out != "" || !strings.Contains(stderr, "not running") {
		t.Errorf("device status --json with no agent: stdout %q, stderr %q, %v", out, stderr, err)
	}
}
