package device

import (
	"maps"
	"slices"

	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/session"
)

// A Policy is what a device serves and to whom: its services, its roles
// and the clients configured by ID, as in [Config]. A running device
// takes a new one with [Device.Reload].
type Policy struct {
	Services map[string]string
	Roles    map[string][]string
	Clients  map[identity.ID][]string
}

// policy returns the policy in force. Its maps are never changed: Reload
// replaces the whole. A Device made without New (in tests) has cfg's.
func (d *Device) policy() *Policy {
	if p := d.pol.Load(); p != nil {
		return p
	}
	return &Policy{Services: d.cfg.Services, Roles: d.cfg.Roles, Clients: d.cfg.Clients}
}

// Reload puts p in force, once it checks as a Config's would (services
// defined, roles and clients naming defined services): streams opened
// from now on are checked against it, the relay is told the new list of
// who may reach the device, and the sessions of clients it no longer
// allows (configured clients taken out, users whose role is gone) are
// closed. Users paired before keep their role if it still exists. The
// in-process services ([Config.Handlers]) stay as they are: p's services
// may not take their names, and its roles and clients may name them. It
// returns what changed, for the log.
func (d *Device) Reload(p Policy) (changed []string, err error) {
	cfg := d.cfg
	cfg.Services, cfg.Roles, cfg.Clients = p.Services, p.Roles, p.Clients
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	d.counters.addServices(maps.Keys(p.Services))
	old := d.pol.Swap(&p)
	if !maps.Equal(old.Services, p.Services) {
		changed = append(changed, "services")
	}
	if !maps.EqualFunc(old.Roles, p.Roles, slices.Equal) {
		changed = append(changed, "roles")
	}
	if !maps.EqualFunc(old.Clients, p.Clients, slices.Equal) {
		changed = append(changed, "clients")
	}
	d.agent.Paths().AccessChanged()
	d.mu.Lock()
	open := slices.Collect(maps.Keys(d.sessions))
	d.mu.Unlock()
	for _, s := range open {
		if svcs, known := d.access(s.PeerID()); !known || len(svcs) == 0 {
			s.Close(session.CloseRevoked, "the device's configuration no longer allows this client")
		}
	}
	return changed, nil
}
