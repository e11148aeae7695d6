package device

import (
	"github.com/burrow-tunnel/burrow/lan"
	"github.com/burrow-tunnel/burrow/paths"
)

// The LAN: unless Config.NoLAN, the device answers mDNS queries on its
// LAN for its current tag (package lan), with the UDP port of its direct
// paths, and takes sessions that start there, from addresses on its own
// networks, without the relay. Each is authorized as every other session.

// directOptions are Direct, with sessions from the LAN taken unless the
// device is kept off it.
func (c *Config) directOptions() paths.DirectOptions {
	o := c.Direct
	o.AcceptLAN = !c.NoLAN
	return o
}

// announce starts announcing the device on the LAN, unless it is kept
// off it.
func (d *Device) announce() {
	if d.cfg.NoLAN {
		d.lanStatus = "off"
		return
	}
	port := d.agent.Paths().DirectPort()
	if port == 0 {
		d.lanStatus = "not announced: direct paths and the UDP relay path are off, so the device has no UDP port to be reached at"
		d.log.Info(d.lanStatus)
		return
	}
	f, err := lan.Follow(lan.AnnounceConfig{Device: d.ID(), Port: port, Interface: d.cfg.LANInterface, Logger: d.log}, 0)
	if err != nil {
		d.lanStatus = "not announced: " + err.Error()
		d.log.Warn("not announced on the LAN", "err", err)
		return
	}
	d.lan = f
}
