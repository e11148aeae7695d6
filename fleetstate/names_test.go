package fleetstate

import (
	"encoding/json"
	"errors"
	"net/http"
	"testing"

	"github.com/burrow-tunnel/burrow/internal/testing/natstest"
	"github.com/burrow-tunnel/burrow/relay"
)

// TestDeviceNames: a named token created through relay A names the device
// it enrolls at relay B; a rename through B reaches A's listing; a
// removal drops the name; a name for several devices, or for a device not
// enrolled, is refused.
func TestDeviceNames(t *testing.T) {
	ns := natstest.Start(t)
	a, b := startRelay(t, ns.URL()), startRelay(t, ns.URL())
	code, body := a.call("POST", "/tokens", relay.TokenRequest{Uses: 1, TTL: "1h", Name: "front-door"})
	if code != http.StatusOK {
		t.Fatalf("create named token: %d %s", code, body)
	}
	var tok struct{ Token string }
	json.Unmarshal(body, &tok)
	if code, body := a.call("POST", "/tokens", relay.TokenRequest{Uses: 2, TTL: "1h", Name: "x"}); code != http.StatusBadRequest {
		t.Fatalf("a named token for 2 devices: %d %s, want it refused", code, body)
	}
	dev := newIdentity(t)
	l, err := b.dial(dev, tok.Token)
	if err != nil {
		t.Fatalf("enroll with the named token: %v", err)
	}
	l.Close()
	named := func(r *fleetRelay, want string) func() bool {
		return func() bool {
			devs, _ := r.state.Devices()
			return len(devs) == 1 && devs[0].ID == dev.ID() && devs[0].Name == want
		}
	}
	eventually(t, "A lists the device as front-door", named(a, "front-door"))
	eventually(t, "B lists the device as front-door", named(b, "front-door"))

	if code, body := b.call("PUT", "/devices/"+dev.ID().String()+"/name", map[string]string{"name": "back-door"}); code != http.StatusNoContent {
		t.Fatalf("rename: %d %s", code, body)
	}
	eventually(t, "A sees the new name", named(a, "back-door"))
	if err := a.state.SetName(dev.ID(), "bad name"); err == nil {
		t.Fatal("a name with a space was accepted")
	}
	if err := a.state.SetName(randomID(), "x"); !errors.Is(err, relay.ErrNotEnrolled) {
		t.Fatalf("naming a device not enrolled: %v", err)
	}
	if err := a.state.Remove(dev.ID()); err != nil {
		t.Fatal(err)
	}
	eventually(t, "B forgets the device and its name", func() bool {
		devs, _ := b.state.Devices()
		b.state.mu.Lock()
		defer b.state.mu.Unlock()
		return len(devs) == 0 && len(b.state.names) == 0
	})
}
