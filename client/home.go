package client

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/internal/fileperm"
	"github.com/burrow-tunnel/burrow/internal/yamlstrict"
	"github.com/burrow-tunnel/burrow/pairing"
)

// A Home is the directory where a client keeps its identity and the
// devices it knows:
//
//	identity.key   the client's key (created on first use)
//	devices.yaml   known devices, by name (written by Pair; editable)
//
// Every method refuses a home that a user other than the client's or root
// owns, or that others may write (matching
// [identity.ErrUnsafePermissions]): whoever can change it chooses the
// client's key and the device keys it trusts.
type Home struct{ Dir string }

// check refuses an unsafe home (see [Home]).
func (h Home) check() error { return fileperm.CheckDir(h.Dir, "client home") }

// IdentityPath is where the client's key is.
func (h Home) IdentityPath() string { return filepath.Join(h.Dir, "identity.key") }

// DevicesPath is where the known devices are.
func (h Home) DevicesPath() string { return filepath.Join(h.Dir, "devices.yaml") }

// Identity loads the client's identity, creating it if there is none.
func (h Home) Identity() (id *identity.Identity, created bool, err error) {
	if err := h.check(); err != nil {
		return nil, false, err
	}
	return identity.LoadOrCreate(h.IdentityPath())
}

// A KnownDevice is a device the client paired with.
type KnownDevice struct {
	Name     string      `yaml:"-"`
	ID       identity.ID `yaml:"id"`
	Relay    string      `yaml:"relay"`
	RelayID  identity.ID `yaml:"relay_id,omitempty"`
	Role     string      `yaml:"role,omitempty"`
	Services []string    `yaml:"services,omitempty,flow"`
	Paired   time.Time   `yaml:"paired,omitempty"`
}

// devicesFile is the YAML layout of devices.yaml.
type devicesFile map[string]knownDeviceYAML

type knownDeviceYAML struct {
	ID       string    `yaml:"id"`
	Relay    string    `yaml:"relay"`
	RelayID  string    `yaml:"relay_id,omitempty"`
	Role     string    `yaml:"role,omitempty"`
	Services []string  `yaml:"services,omitempty,flow"`
	Paired   time.Time `yaml:"paired,omitempty"`
}

// Devices returns the known devices, by name.
func (h Home) Devices() ([]KnownDevice, error) {
	if err := h.check(); err != nil {
		return nil, err
	}
	data, err := os.ReadFile(h.DevicesPath())
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return parseDevices(h.DevicesPath(), data)
}

// parseDevices parses the known-devices file at path.
func parseDevices(path string, data []byte) ([]KnownDevice, error) {
	var f devicesFile
	if err := yamlstrict.Decode(data, &f); err != nil {
		if errors.Is(err, yamlstrict.ErrEmpty) {
			return nil, nil
		}
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	var out []KnownDevice
	for name, d := range f {
		kd := KnownDevice{Name: name, Relay: d.Relay, Role: d.Role, Services: d.Services, Paired: d.Paired}
		var err error
		if kd.ID, err = identity.ParseID(d.ID); err != nil {
			return nil, fmt.Errorf("%s: device %s: %w", path, name, err)
		}
		if d.RelayID != "" {
			if kd.RelayID, err = identity.ParseID(d.RelayID); err != nil {
				return nil, fmt.Errorf("%s: device %s: relay_id: %w", path, name, err)
			}
		}
		out = append(out, kd)
	}
	slices.SortFunc(out, func(a, b KnownDevice) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// ErrUnknownDevice is returned by [Home.Device] for a name it does not know.
var ErrUnknownDevice = errors.New("unknown device")

// Device returns the known device with this name or ID.
func (h Home) Device(nameOrID string) (KnownDevice, error) {
	devs, err := h.Devices()
	if err != nil {
		return KnownDevice{}, err
	}
	for _, d := range devs {
		if d.Name == nameOrID || d.ID.String() == strings.ToLower(nameOrID) {
			return d, nil
		}
	}
	names := make([]string, len(devs))
	for i, d := range devs {
		names[i] = d.Name
	}
	known := "none yet: pair with burrow pair INVITE"
	if len(names) > 0 {
		known = strings.Join(names, ", ")
	}
	return KnownDevice{}, fmt.Errorf("%w %q (known devices: %s)", ErrUnknownDevice, nameOrID, known)
}

// SaveDevice records kd under its name, replacing a device of that name or
// ID. The file is replaced atomically (written, synced, renamed).
func (h Home) SaveDevice(kd KnownDevice) error {
	if err := pairing.ValidName(kd.Name); err != nil {
		return err
	}
	devs, err := h.Devices()
	if err != nil {
		return err
	}
	devs = slices.DeleteFunc(devs, func(d KnownDevice) bool { return d.Name == kd.Name || d.ID == kd.ID })
	return h.writeDevices(append(devs, kd))
}

// ForgetDevice removes the device named nameOrID (or with that ID) from
// the known devices, and returns what was recorded of it; the client can
// no longer reach it until it pairs again. It fails with ErrUnknownDevice
// if there is no such device.
func (h Home) ForgetDevice(nameOrID string) (KnownDevice, error) {
	kd, err := h.Device(nameOrID)
	if err != nil {
		return KnownDevice{}, err
	}
	devs, err := h.Devices()
	if err != nil {
		return KnownDevice{}, err
	}
	devs = slices.DeleteFunc(devs, func(d KnownDevice) bool { return d.ID == kd.ID })
	return kd, h.writeDevices(devs)
}

// writeDevices replaces devices.yaml with devs, atomically (written,
// synced, renamed).
func (h Home) writeDevices(devs []KnownDevice) error {
	f := devicesFile{}
	for _, d := range devs {
		f[d.Name] = toYAML(d)
	}
	data, err := yaml.Marshal(f)
	if err != nil {
		return err
	}
	data = append([]byte("# Devices this client has paired with (burrow pair), by name.\n"), data...)
	return writeAtomic(h.DevicesPath(), data)
}

func toYAML(d KnownDevice) knownDeviceYAML {
	y := knownDeviceYAML{ID: d.ID.String(), Relay: d.Relay, Role: d.Role, Services: d.Services, Paired: d.Paired}
	if !d.RelayID.IsZero() {
		y.RelayID = d.RelayID.String()
	}
	return y
}

// writeAtomic replaces path with data: a crash leaves the old file or the
// new one.
func writeAtomic(path string, data []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+"-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	if d, err := os.Open(filepath.Dir(path)); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}
