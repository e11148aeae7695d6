package main

import (
	"strings"
	"testing"

	"github.com/burrow-tunnel/burrow/client"
)

// TestBinaryDevicesForget: "burrow devices forget NAME" removes a paired
// device from the client's home and says so; an unknown name fails and
// lists the known ones.
func TestBinaryDevicesForget(t *testing.T) {
	home := t.TempDir()
	h := client.Home{Dir: home}
	for _, name := range []string{"cam1", "cam2"} {
		if err := h.SaveDevice(client.KnownDevice{Name: name, ID: newID(t), Relay: "relay.example.com:443"}); err != nil {
			t.Fatal(err)
		}
	}
	if out := mustRun(t, "devices", "forget", "cam1", "--home", home); !strings.HasPrefix(out, "forgot cam1 (") {
		t.Fatalf("devices forget cam1: %q", out)
	}
	if out := mustRun(t, "devices", "--home", home); strings.Contains(out, "cam1") || !strings.Contains(out, "cam2") {
		t.Fatalf("devices after forgetting cam1:\n%s", out)
	}
	runFails(t, `unknown device "cam1" (known devices: cam2)`, "devices", "forget", "cam1", "--home", home)
}
