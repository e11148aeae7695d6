package client

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/burrow-tunnel/burrow/pairing"
	"github.com/burrow-tunnel/burrow/relaylink"
)

// DefaultHomeDir is the client home used when none is named, as the burrow
// command finds it: $BURROW_HOME if set, else "burrow" in the user's
// configuration directory ([os.UserConfigDir]).
func DefaultHomeDir() (string, error) {
	if h := os.Getenv("BURROW_HOME"); h != "" {
		return h, nil
	}
	dir, err := os.UserConfigDir()
	if err != nil {
		return "", fmt.Errorf("no default configuration directory (%w): pass the path explicitly", err)
	}
	return filepath.Join(dir, "burrow"), nil
}

// RelayConfig is the relay through which the client reaches kd: the
// relay's address, pinned by its ID when the pairing recorded one.
func (kd KnownDevice) RelayConfig() relaylink.RelayConfig {
	return relaylink.RelayConfig{Addr: kd.Relay, ID: kd.RelayID}
}

// InviteRelay is the relay the device of inv is attached to, pinned by
// its ID when the invite gives one: the relay to pair through.
func InviteRelay(inv pairing.Invite) relaylink.RelayConfig {
	return relaylink.RelayConfig{Addr: inv.Relay, ID: inv.RelayID}
}

// InviteName is the name to know the device of inv by once paired: name
// if it is not empty, else the name the device gave itself, else its
// short ID. It fails if that is not a valid name ([pairing.ValidName]).
func InviteName(inv pairing.Invite, name string) (string, error) {
	if name == "" {
		name = inv.Name
	}
	if name == "" {
		name = inv.Device.Short()
	}
	if err := pairing.ValidName(name); err != nil {
		return "", err
	}
	return name, nil
}

// SavePaired records in h the device of inv, with what pairing granted
// (p), under name (see [InviteName]), and returns the record.
func (h Home) SavePaired(name string, inv pairing.Invite, p Paired) (KnownDevice, error) {
	kd := KnownDevice{Name: name, ID: inv.Device, Relay: inv.Relay, RelayID: inv.RelayID,
		Role: p.Role, Services: p.Services, Paired: time.Now().UTC().Truncate(time.Second)}
	if err := h.SaveDevice(kd); err != nil {
		return KnownDevice{}, err
	}
	return kd, nil
}
