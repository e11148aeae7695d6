package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/burrow-tunnel/burrow/client"
)

// complete runs the real binary's hidden __complete command with args
// and returns the completions it offers (its directive line dropped).
func complete(t *testing.T, args ...string) []string {
	t.Helper()
	out := mustRun(t, append([]string{"__complete"}, args...)...)
	var got []string
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		if l != "" && !strings.HasPrefix(l, ":") {
			got = append(got, l)
		}
	}
	return got
}

// TestBinaryCompletion: the shell completion of connect and ping offers
// the devices paired in the client's home, and connect's second argument
// the services the named device's pairing grants.
func TestBinaryCompletion(t *testing.T) {
	home := filepath.Join(t.TempDir(), "home")
	if err := os.MkdirAll(home, 0o700); err != nil {
		t.Fatal(err)
	}
	h := client.Home{Dir: home}
	for _, kd := range []client.KnownDevice{
		{Name: "cam1", ID: newID(t), Relay: "relay.example:443", RelayID: newID(t), Role: "viewer", Services: []string{"rtsp", "http"}},
		{Name: "cam2", ID: newID(t), Relay: "relay.example:443", RelayID: newID(t), Role: "admin", Services: []string{"ssh"}},
		{Name: "router", ID: newID(t), Relay: "relay.example:443", RelayID: newID(t), Role: "admin", Services: []string{"http"}},
	} {
		if err := h.SaveDevice(kd); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"connect", "--home", home, ""}, "cam1 cam2 router"},
		{[]string{"connect", "--home", home, "ca"}, "cam1 cam2"},
		{[]string{"connect", "--home", home, "cam1", ""}, "http rtsp"},
		{[]string{"connect", "--home", home, "cam1", "r"}, "rtsp"},
		{[]string{"connect", "--home", home, "cam2", ""}, "ssh"},
		{[]string{"connect", "--home", home, "nope", ""}, ""},
		{[]string{"connect", "--home", home, "cam1", "http", ""}, ""},
		{[]string{"ping", "--home", home, "r"}, "router"},
		{[]string{"ping", "--home", home, "cam1", ""}, ""},
	} {
		if got := strings.Join(complete(t, tc.args...), " "); got != tc.want {
			t.Errorf("burrow __complete %s: %q, want %q", strings.Join(tc.args, " "), got, tc.want)
		}
	}
	// $BURROW_HOME is the home when --home is not given.
	t.Setenv("BURROW_HOME", home)
	if got := strings.Join(complete(t, "ping", ""), " "); got != "cam1 cam2 router" {
		t.Errorf("ping completion with BURROW_HOME: %q", got)
	}
}
