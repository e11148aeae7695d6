package device

import (
	"slices"
	"time"

	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/paths"
)

// Status describes a running device.
type Status struct {
	Relay    paths.Status    `json:"relay"`
	Sessions []SessionStatus `json:"sessions"`
	// LAN says whether and where the device is announced on the LAN
	// ("announced on eth0(192.168.1.20), port 4242", "not announced: …",
	// or "off").
	LAN string `json:"lan"`
	// StateError says why the state directory could not be written when
	// the device last tried; "" if it could.
	StateError string `json:"state_error,omitempty"`
	// NotSaved names the users revoked while the state directory could
	// not be written: shut out, but back in after a restart until saved.
	NotSaved []string `json:"revocations_not_saved,omitempty"`
}

// SessionStatus describes one client's session.
type SessionStatus struct {
	Client  identity.ID   `json:"client"`
	Name    string        `json:"name,omitempty"`
	Since   time.Time     `json:"since"`
	Path    string        `json:"path"`    // "relay", "relay udp", "direct ADDR" or "lan ADDR"
	RTT     time.Duration `json:"rtt"`     // of the path in use
	Tunnels int           `json:"tunnels"` // open now
	Total   int           `json:"total"`   // opened since the session began
}

// Status returns the device's relay attachment and open sessions.
func (d *Device) Status() Status {
	st := Status{Relay: d.agent.Paths().Status(), LAN: d.lanStatus}
	if d.lan != nil {
		st.LAN = d.lan.Status()
	}
	if d.st != nil {
		if err := d.st.writable(); err != nil {
			st.StateError = err.Error()
		}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, u := range d.unsaved {
		st.NotSaved = append(st.NotSaved, u.Name)
	}
	slices.Sort(st.NotSaved)
	for s, info := range d.sessions {
		path := s.Path()
		rtt := s.Stats().RTT
		if path.Direct || path.RelayUDP {
			rtt = path.RTT
		}
		st.Sessions = append(st.Sessions, SessionStatus{
			Client:  s.PeerID(),
			Name:    d.nameLocked(s.PeerID()),
			Since:   info.since,
			Path:    path.String(),
			RTT:     rtt,
			Tunnels: info.tunnels,
			Total:   info.total,
		})
	}
	slices.SortFunc(st.Sessions, func(a, b SessionStatus) int { return a.Since.Compare(b.Since) })
	return st
}

// nameLocked returns the user name of a client, or "".
func (d *Device) nameLocked(id identity.ID) string {
	if u, ok := d.users[id]; ok {
		return u.Name
	}
	return ""
}
