package relay

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestStoreDeviceNames: a named token names the device it enrolls; a
// rename replaces the name and survives reopening the store; names are
// checked; a device not enrolled cannot be named; removal forgets it.
func TestStoreDeviceNames(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	st, err := OpenStore(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{"", "two words", "-x", strings.Repeat("a", MaxDeviceNameLen+1), "caméra"} {
		if _, err := st.CreateNamedToken(bad, time.Hour); err == nil {
			t.Errorf("name %q accepted", bad)
		}
	}
	tok, err := st.CreateNamedToken("front-door", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	dev, other := newIdentity(t).ID(), newIdentity(t).ID()
	if err := st.Enroll(dev, tok); err != nil {
		t.Fatal(err)
	}
	if err := st.Enroll(other, tok); !errors.Is(err, ErrTokenUnknown) {
		t.Fatalf("a named token enrolled a second device: %v", err)
	}
	name := func() string {
		t.Helper()
		devs, err := st.Devices()
		if err != nil || len(devs) != 1 || devs[0].ID != dev {
			t.Fatalf("devices %+v, %v", devs, err)
		}
		return devs[0].Name
	}
	if n := name(); n != "front-door" {
		t.Fatalf("name %q after enrolling with the named token", n)
	}
	if err := st.SetName(dev, "back.door_2"); err != nil {
		t.Fatal(err)
	}
	st.Close()
	if st, err = OpenStore(path); err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if n := name(); n != "back.door_2" {
		t.Fatalf("name %q after rename and reopen", n)
	}
	if err := st.SetName(other, "x"); !errors.Is(err, ErrNotEnrolled) {
		t.Fatalf("naming a device not enrolled: %v", err)
	}
	if err := st.SetName(dev, ""); err != nil || name() != "" {
		t.Fatalf("clearing the name: %v, name %q", err, name())
	}
}

// TestStoreCheck: a readiness probe's check passes on an open store and
// fails, saying why, once it is closed.
func TestStoreCheck(t *testing.T) {
	st, err := OpenStore(filepath.Join(t.TempDir(), "relay.db"))
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Check(); err != nil {
		t.Fatalf("open store: %v", err)
	}
	st.Close()
	if err := st.Check(); err == nil {
		t.Fatal("closed store: Check passed")
	}
}
