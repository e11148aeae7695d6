package main

import (
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// inviteShape is an element of "burrow device invites --json" (docs/json.md).
var inviteShape = jsonShape{"id": "string", "role": "string", "name": "string",
	"created": "time", "expires": "time", "uses_left": "number"}

// TestBinaryDeviceInvites: device invites lists the pending invites (as a
// table and as JSON); invites cancel withdraws one, which then pairs no
// one, while the other still does.
func TestBinaryDeviceInvites(t *testing.T) {
	invite, cfg := pairingDeviceConfig(t)
	first, second := invite(), invite()

	out, stderr, err := run(t, "device", "invites", "--config", cfg)
	if err != nil || !regexp.MustCompile(`^ID +ROLE +NAME +EXPIRES +USES LEFT\n([0-9a-f]{8} +viewer +- +.+ 1\n){2}$`).MatchString(out) {
		t.Fatalf("device invites: %q %q %v", out, stderr, err)
	}
	out, stderr, err = run(t, "device", "invites", "--config", cfg, "--json")
	if err != nil {
		t.Fatalf("device invites --json: %q %v", stderr, err)
	}
	list := checkArray(t, "device invites --json", parseJSON(t, "device invites --json", out), 2, inviteShape)
	if list[0]["role"] != "viewer" || list[0]["uses_left"] != 1.0 || list[0]["name"] != "" {
		t.Errorf("device invites --json: %v", list[0])
	}

	// The list is by expiry: the first is the first invite made.
	id := list[0]["id"].(string)
	out, stderr, err = run(t, "device", "invites", "cancel", id, "--config", cfg)
	if err != nil || out != "cancelled invite "+id+" (role viewer)\n" {
		t.Fatalf("invites cancel: %q %q %v", out, stderr, err)
	}
	if _, stderr, err := run(t, "device", "invites", "cancel", id, "--config", cfg); err == nil || !strings.Contains(stderr, "no such pending invite") {
		t.Fatalf("cancelling it again: %q %v", stderr, err)
	}
	out, _, _ = run(t, "device", "invites", "--config", cfg, "--json")
	if left := checkArray(t, "after cancel", parseJSON(t, "after cancel", out), 1, inviteShape); left[0]["id"] == id {
		t.Fatalf("the cancelled invite is still listed: %v", left)
	}

	home := filepath.Join(t.TempDir(), "home")
	if _, out, stderr, err := runPair(t, first+"\n", "--name", "cam1", "--home", home); err == nil {
		t.Fatalf("pairing with the cancelled invite: %q %q", out, stderr)
	}
	if _, out, stderr, err := runPair(t, second+"\n", "--name", "cam1", "--home", home); err != nil || !strings.Contains(out, "paired with cam1") {
		t.Fatalf("pairing with the other invite: %q %q %v", out, stderr, err)
	}
	out, _, _ = run(t, "device", "invites", "--config", cfg, "--json")
	if strings.TrimSpace(out) != "[]" {
		t.Fatalf("invites once both are gone: %q, want []", out)
	}
}
