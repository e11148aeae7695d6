package paths

import (
	"net/netip"
	"slices"

	"github.com/burrow-tunnel/burrow/peerproto"
)

// Candidates: the addresses this agent offers a peer for a direct path.

// LocalCandidates returns the addresses at which peers may reach this
// agent's direct socket: the configured or interface addresses with its
// port, and the address the relay saw it from. Nil if direct paths are off.
func (c *Conn) LocalCandidates() []netip.AddrPort {
	if !c.directOn() {
		return nil
	}
	var out []netip.AddrPort
	if obs := c.ds.observed.Load(); obs != nil {
		out = append(out, *obs)
	}
	addrs := c.cfg.Direct.Addrs
	if len(addrs) == 0 {
		list := c.cfg.Direct.InterfaceAddrs
		if list == nil {
			list = interfaceAddrs
		}
		all, err := list()
		if err != nil {
			c.log.Debug("listing interface addresses failed", "err", err)
		}
		for _, a := range all {
			if usableCandidate(a) && !a.IsLoopback() {
				addrs = append(addrs, a)
			}
		}
	}
	for _, a := range addrs {
		ap := netip.AddrPortFrom(a.Unmap(), c.ds.port)
		if !slices.Contains(out, ap) {
			out = append(out, ap)
		}
	}
	if len(out) > peerproto.MaxCandidates {
		out = out[:peerproto.MaxCandidates]
	}
	return out
}

// usableCandidate reports whether a may be offered or probed: a unicast
// address that needs no zone.
func usableCandidate(a netip.Addr) bool {
	return a.IsValid() && !a.IsUnspecified() && !a.IsMulticast() && !a.IsLinkLocalUnicast() &&
		a.Zone() == "" && a != netip.AddrFrom4([4]byte{255, 255, 255, 255})
}

// interfaceAddrs lists the addresses of the interfaces that are up.
func interfaceAddrs() ([]netip.Addr, error) {
	ps, err := interfacePrefixes()
	out := make([]netip.Addr, len(ps))
	for i, p := range ps {
		out[i] = p.Addr()
	}
	return out, err
}
