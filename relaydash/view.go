package relaydash

import (
	"fmt"
	"slices"
	"time"

	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/relay"
)

// maxRows bounds each of the page's lists of devices, clients and
// sessions: a relay of many thousands gives their counts, and the first
// rows by ID, rather than a page of megabytes every 2 seconds.
const maxRows = 500

// maxRefusals bounds the refusals the page lists.
const maxRefusals = 50

// A view is what the page shows, every field ready to print: the template
// only places and escapes them.
type view struct {
	RelayID, RelayShort string
	Taken               string     // when the state was read
	Devices             []agentRow // the first maxRows, by ID
	Clients             []agentRow // the first maxRows, by ID
	Sessions            []sessionRow
	// The counts of all attached devices and clients and of all
	// sessions, of which the lists above hold the first maxRows.
	DevicesTotal, ClientsTotal, SessionsTotal int
	Traffic                                   chart
	Forwarded                                 string // bytes forwarded since the relay started
	Dropped                                   uint64 // packets dropped since the relay started
	Window                                    string // see relay.RelayedWindow
	RefusalsKnown                             bool   // Config.Refusals is set
	Refusals                                  []refusalRow
}

type agentRow struct {
	ID, Short, Name string
	Instance        string // clients only
	Since, Age      string
	Remote          string
	In, Out         string
	Dropped         uint64
}

type sessionRow struct {
	Client, ClientShort  string
	Device, DeviceShort  string
	DeviceName           string
	Path                 string // "relay" or "direct or idle"
	Relayed              bool
	LastRelayed, LastAge string
}

type refusalRow struct {
	Time, Age, Remote, Role string
	Agent, AgentShort       string
	Reason                  string
}

// view reads the relay's state now.
func (d *Dashboard) view() view {
	snap := d.cfg.Relay.Snapshot()
	names := d.names()
	st := d.cfg.Relay.Stats()
	now := snap.Taken
	id := d.cfg.Relay.ID()
	v := view{
		RelayID: id.String(), RelayShort: id.Short(),
		Taken:     clock(now),
		Traffic:   newChart(d.traffic.values()),
		Forwarded: formatBytes(st.BytesForwarded),
		Dropped:   st.PacketsDropped,
		Window:    fmt.Sprintf("%.0f s", relay.RelayedWindow.Seconds()),

		DevicesTotal: len(snap.Devices), ClientsTotal: len(snap.Clients), SessionsTotal: len(snap.Pairs),
	}
	snap.Devices = snap.Devices[:min(len(snap.Devices), maxRows)]
	snap.Clients = snap.Clients[:min(len(snap.Clients), maxRows)]
	snap.Pairs = snap.Pairs[:min(len(snap.Pairs), maxRows)]
	for _, a := range snap.Devices {
		v.Devices = append(v.Devices, agentRowOf(a, now, names, false))
	}
	for _, a := range snap.Clients {
		v.Clients = append(v.Clients, agentRowOf(a, now, nil, true))
	}
	for _, p := range snap.Pairs {
		r := sessionRow{
			Client: p.Client.String(), ClientShort: shortInstance(p.Client, p.ClientInstance),
			Device: p.Device.String(), DeviceShort: p.Device.Short(), DeviceName: names[p.Device],
			Path: "direct or idle", Relayed: p.Relayed,
			LastRelayed: clock(p.LastRelayed), LastAge: age(now.Sub(p.LastRelayed)),
		}
		if p.Relayed {
			r.Path = "relay"
		}
		v.Sessions = append(v.Sessions, r)
	}
	if d.cfg.Refusals != nil {
		v.RefusalsKnown = true
		refs := slices.SortedFunc(slices.Values(d.cfg.Refusals()), func(a, b Refusal) int { return b.Time.Compare(a.Time) })
		for _, r := range refs[:min(len(refs), maxRefusals)] {
			row := refusalRow{Time: clock(r.Time), Age: age(now.Sub(r.Time)), Remote: r.Remote, Role: r.Role, Reason: r.Reason}
			if !r.Agent.IsZero() {
				row.Agent, row.AgentShort = r.Agent.String(), r.Agent.Short()
			}
			v.Refusals = append(v.Refusals, row)
		}
	}
	return v
}

// agentRowOf is the row of the device or client a; names are the
// devices' names.
func agentRowOf(a relay.Agent, now time.Time, names map[identity.ID]string, client bool) agentRow {
	r := agentRow{
		ID: a.ID.String(), Short: a.ID.Short(),
		Since: clock(a.Since), Age: age(now.Sub(a.Since)),
		Remote:  a.Remote,
		In:      fmt.Sprintf("%s (%d packets)", formatBytes(a.BytesIn), a.PacketsIn),
		Out:     fmt.Sprintf("%s (%d packets)", formatBytes(a.BytesOut), a.PacketsOut),
		Dropped: a.Dropped,
	}
	if client {
		r.Instance = fmt.Sprintf("%016x", a.Instance)
	} else {
		r.Name = names[a.ID]
	}
	return r
}

// names returns the devices' names now.
func (d *Dashboard) names() map[identity.ID]string {
	if d.cfg.Names == nil {
		return nil
	}
	return d.cfg.Names()
}

// shortInstance names a client process: its short ID and instance.
func shortInstance(id identity.ID, instance uint64) string {
	return fmt.Sprintf("%s/%04x", id.Short(), instance&0xffff)
}

// clock writes t as a UTC time of day, with the date if it is not today's.
func clock(t time.Time) string {
	t = t.UTC()
	if dateOf(t) != dateOf(time.Now().UTC()) {
		return t.Format("2006-01-02 15:04:05 UTC")
	}
	return t.Format("15:04:05 UTC")
}

func dateOf(t time.Time) int {
	y, m, d := t.Date()
	return y*10000 + int(m)*100 + d
}

// age writes d in its two largest units: "42s", "5m 3s", "2h 5m", "3d 4h".
func age(d time.Duration) string {
	if d < 0 {
		d = 0
	}
	s := int64(d / time.Second)
	switch {
	case s < 60:
		return fmt.Sprintf("%ds", s)
	case s < 3600:
		return fmt.Sprintf("%dm %ds", s/60, s%60)
	case s < 86400:
		return fmt.Sprintf("%dh %dm", s/3600, s%3600/60)
	}
	return fmt.Sprintf("%dd %dh", s/86400, s%86400/3600)
}
