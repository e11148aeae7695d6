package client

import (
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// TestHomeRefusesUnsafeDir: a client home that others may write, or that
// another user owns, is refused by every use, with the command that fixes
// it: whoever can change it chooses the keys the client trusts.
func TestHomeRefusesUnsafeDir(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("no Unix owners and modes")
	}
	check := func(t *testing.T, h Home, fix string) {
		t.Helper()
		uses := map[string]func() error{
			"Identity":   func() error { _, _, err := h.Identity(); return err },
			"Devices":    func() error { _, err := h.Devices(); return err },
			"Device":     func() error { _, err := h.Device("cam"); return err },
			"SaveDevice": func() error { return h.SaveDevice(KnownDevice{Name: "cam2"}) },
		}
		for name, use := range uses {
			if err := use(); err == nil || !strings.Contains(err.Error(), fix) {
				t.Errorf("%s: err = %v, want it to say %q", name, err, fix)
			}
		}
	}
	t.Run("writable by others", func(t *testing.T) {
		h := homeWithDevice(t)
		os.Chmod(h.Dir, 0o777)
		check(t, h, "run chmod go-w "+h.Dir)
	})
	t.Run("another user's", func(t *testing.T) {
		if os.Geteuid() != 0 {
			t.Skip("needs root, to give the home to another user")
		}
		h := homeWithDevice(t)
		if err := os.Chown(h.Dir, 65534, -1); err != nil {
			t.Fatal(err)
		}
		check(t, h, "runuser -u ")
	})
}

// homeWithDevice returns a home with an identity and a device named cam.
func homeWithDevice(t *testing.T) Home {
	t.Helper()
	h := Home{Dir: filepath.Join(t.TempDir(), "home")}
	id, _, err := h.Identity()
	if err != nil {
		t.Fatal(err)
	}
	if err := h.SaveDevice(KnownDevice{Name: "cam", ID: id.ID(), Relay: "relay.example:443"}); err != nil {
		t.Fatal(err)
	}
	return h
}
