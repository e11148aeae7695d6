package client

import (
	"errors"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/burrow-tunnel/burrow/identity"
)

// FuzzDevices: no known-devices file, however malformed, makes parsing
// panic, and what parses round-trips through the file's encoding.
func FuzzDevices(f *testing.F) {
	gen, err := identity.Generate()
	if err != nil {
		f.Fatal(err)
	}
	id := gen.ID().String()
	f.Add([]byte("cam1:\n  id: " + id + "\n  relay: relay.example.com:443\n  relay_id: " + id +
		"\n  role: viewer\n  services: [rtsp, http]\n  paired: 2026-11-26T12:00:00Z\n"))
	f.Add([]byte("cam1: {id: nope}\n"))
	f.Add([]byte(""))
	f.Fuzz(func(t *testing.T, data []byte) {
		devs, err := parseDevices("devices.yaml", data)
		if err != nil {
			return
		}
		// What parses is written back as SaveDevice writes it, and reads
		// back the same.
		file := devicesFile{}
		for _, d := range devs {
			file[d.Name] = toYAML(d)
		}
		out, err := yaml.Marshal(file)
		if err != nil {
			t.Fatal(err)
		}
		again, err := parseDevices("devices.yaml", out)
		if err != nil || len(again) != len(devs) {
			t.Fatalf("%d devices read back as %d: %v\n%s", len(devs), len(again), err, out)
		}
		for i := range devs {
			a, b := devs[i], again[i]
			if a.Name != b.Name || a.ID != b.ID || a.RelayID != b.RelayID || a.Relay != b.Relay || !a.Paired.Equal(b.Paired) {
				t.Fatalf("%+v read back as %+v", a, b)
			}
		}
	})
}

// TestForgetDevice: a forgotten device, by name or by ID, is gone from the
// known devices and the others stay; an unknown one is an error that
// lists the known ones.
func TestForgetDevice(t *testing.T) {
	h := Home{Dir: t.TempDir()}
	ids := make([]identity.ID, 3)
	for i, name := range []string{"cam1", "cam2", "router"} {
		gen, err := identity.Generate()
		if err != nil {
			t.Fatal(err)
		}
		ids[i] = gen.ID()
		if err := h.SaveDevice(KnownDevice{Name: name, ID: ids[i], Relay: "relay.example.com:443"}); err != nil {
			t.Fatal(err)
		}
	}
	if kd, err := h.ForgetDevice("cam2"); err != nil || kd.ID != ids[1] {
		t.Fatalf("forget cam2: %v, %v", kd, err)
	}
	if kd, err := h.ForgetDevice(ids[2].String()); err != nil || kd.Name != "router" {
		t.Fatalf("forget by ID: %v, %v", kd, err)
	}
	devs, err := h.Devices()
	if err != nil || len(devs) != 1 || devs[0].Name != "cam1" {
		t.Fatalf("after forgetting two of three: %v, %v", devs, err)
	}
	if _, err := h.ForgetDevice("cam2"); !errors.Is(err, ErrUnknownDevice) || !strings.Contains(err.Error(), "cam1") {
		t.Fatalf("forgetting an unknown device: %v", err)
	}
}
