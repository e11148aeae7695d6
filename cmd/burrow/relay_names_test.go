package main

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// relayDeviceShape is an element of "burrow relay devices --json"
// (docs/json.md); online is null when no relay runs.
var relayDeviceShape = jsonShape{"id": "string", "name": "string", "enrolled": "time?", "listed": "bool",
	"online": "bool?", "last_seen": "time?"}

// TestBinaryRelayDeviceNames: a device enrolled with a token made with
// --name is listed under that name (table and JSON), with the relay
// running and without; relay devices name renames it; a device of the
// --devices file is listed with the name after its ID there; --name
// with --uses more than 1 is refused.
func TestBinaryRelayDeviceNames(t *testing.T) {
	dir := t.TempDir()
	relayData := filepath.Join(dir, "relay")
	mustRun(t, "relay", "id", "--data", relayData)
	runFails(t, "a name is for one device", "relay", "token", "create", "--data", relayData, "--uses", "2", "--name", "cam")
	runFails(t, "want letters, digits", "relay", "token", "create", "--data", relayData, "--name", "front door")
	token := strings.TrimSpace(mustRun(t, "relay", "token", "create", "--data", relayData, "--name", "front-door"))
	listedID := newID(t)
	list := filepath.Join(dir, "devices")
	if err := os.WriteFile(list, []byte(listedID.String()+" garage # the listed one\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	relay := start(t, "relay", "relay", "--listen", "127.0.0.1:0", "--data", relayData, "--devices", list)
	m, _ := relay.waitFor(reRelayListening, 0, 10*time.Second)
	cfg := filepath.Join(dir, "device.yaml")
	body := fmt.Sprintf("relay: %s\nrelay_id: %s\nidentity: device.key\nenroll_token: %s\nservices:\n  http: 127.0.0.1:1\nclients:\n  %s: [http]\ndirect: false\n",
		m[1], m[2], token, newID(t))
	if err := os.WriteFile(cfg, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	dev := start(t, "device", "device", "--config", cfg)
	dev.waitFor(reAttached, 0, 10*time.Second)
	devID := strings.TrimSpace(mustRun(t, "id", "--identity", filepath.Join(dir, "device.key")))

	out := mustRun(t, "relay", "devices", "--data", relayData)
	if !regexp.MustCompile(`(?m)^ID +NAME +ENROLLED +ONLINE +LAST SEEN\n` + devID + ` +front-door +\S+ \S+ +yes +-\n` +
		listedID.String() + ` +garage +listed +no +-\n$`).MatchString(out) {
		t.Fatalf("relay devices:\n%s", out)
	}
	devs := checkArray(t, "relay devices --json", parseJSON(t, "relay devices --json", mustRun(t, "relay", "devices", "--data", relayData, "--json")), 2, relayDeviceShape)
	if devs[0]["id"] != devID || devs[0]["name"] != "front-door" || devs[0]["online"] != true || devs[0]["listed"] != false ||
		devs[1]["id"] != listedID.String() || devs[1]["name"] != "garage" || devs[1]["listed"] != true || devs[1]["enrolled"] != nil {
		t.Fatalf("relay devices --json: %v", devs)
	}

	if out := mustRun(t, "relay", "devices", "name", devID, "back-door", "--data", relayData); out != devID+" is named back-door\n" {
		t.Fatalf("relay devices name: %q", out)
	}
	runFails(t, "admitted by the device list "+list+": name it there", "relay", "devices", "name", listedID.String(), "x", "--data", relayData)
	runFails(t, "device not enrolled: burrow relay devices lists", "relay", "devices", "name", newID(t).String(), "x", "--data", relayData)

	// Without a running relay, from its store: the name is kept there.
	dev.stop()
	relay.stop()
	out = mustRun(t, "relay", "devices", "--data", relayData, "--json")
	devs = checkArray(t, "relay devices --json (not running)", parseJSON(t, "not running", out), 1, relayDeviceShape)
	if devs[0]["name"] != "back-door" || devs[0]["online"] != nil {
		t.Fatalf("relay devices --json without the relay: %v", devs)
	}
}
