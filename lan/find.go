package lan

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"

	"github.com/burrow-tunnel/burrow/identity"
)

// DefaultFindTimeout is how long [Find] listens when its config gives no
// timeout: a responder on the LAN answers within milliseconds.
const DefaultFindTimeout = time.Second

// While it listens, [Find] repeats its query in case a query or an answer
// was lost, or a device comes up: first after requeryFirst, then at
// intervals twice as long each time, up to requeryMax.
const (
	requeryFirst = 250 * time.Millisecond
	requeryMax   = 2 * time.Second
)

// mdnsPort and the groups are mDNS's (RFC 6762).
const mdnsPort = 5353

var (
	mdnsGroup4 = netip.AddrPortFrom(netip.MustParseAddr("224.0.0.251"), mdnsPort)
	mdnsGroup6 = netip.MustParseAddr("ff02::fb")
)

// MaxAddrs bounds the addresses kept of one device: a device announces
// those of one interface, a few; more come from someone who lies, and
// each would be dialed.
const MaxAddrs = 8

// serviceName is the name a client asks for.
const serviceName = Service + ".local."

// FindConfig configures [Find].
type FindConfig struct {
	// Interface names the one interface to ask on. Empty: every
	// interface that is up, not loopback and can multicast.
	Interface string
	// Timeout bounds how long Find listens for answers; the search also
	// ends with its context. Zero: [DefaultFindTimeout].
	Timeout time.Duration
	// Now is the clock that picks the windows matched. Nil: time.Now.
	Now func() time.Time
	// Heard, if set, is called as soon as a device answers, and again
	// each time it announces an address not heard before, with all its
	// addresses so far: a caller can try a device while Find still
	// listens (and cancel Find's context once it is done). It runs on
	// Find's goroutine and must not block.
	Heard func(Found)
}

// Found is a device that answered on the LAN.
type Found struct {
	Device identity.ID
	// Window is the window whose tag the device announced (one of the
	// client's window and the two beside it).
	Window int64
	// Addrs are the addresses and port the device announced; a
	// link-local IPv6 address carries the zone it was heard on.
	Addrs []netip.AddrPort
}

// A match is what a tag stands for.
type match struct {
	device identity.ID
	window int64
}

// Find asks the LAN over mDNS for the devices it is given and returns
// those that answered, in the order given, each with the addresses it
// announced. It listens until ctx ends or the timeout passes; answers that
// match none of the devices are ignored. It fails only when it cannot ask
// at all (no interface, no socket, no query sent).
func Find(ctx context.Context, cfg FindConfig, devices []identity.ID) ([]Found, error) {
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultFindTimeout
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	w := Window(cfg.Now())
	tags := make(map[Tag]match, 3*len(devices))
	for _, d := range devices {
		for i, t := range Candidates(d, w) {
			tags[t] = match{device: d, window: w - 1 + int64(i)}
		}
	}
	// Sockets and interfaces are taken here, on the caller's thread: a
	// caller in a network namespace gets that namespace's.
	ifaces, err := interfaces(cfg.Interface)
	if err != nil {
		return nil, fmt.Errorf("lan: find: %w", err)
	}
	q, err := newQuerier(ifaces)
	if err != nil {
		return nil, fmt.Errorf("lan: find: %w", err)
	}
	defer q.close()
	if err := q.send(); err != nil {
		return nil, fmt.Errorf("lan: find: %w", err)
	}

	found := make(map[identity.ID]*Found)
	timeout := time.NewTimer(cfg.Timeout)
	defer timeout.Stop()
	every := requeryFirst
	requery := time.NewTimer(every)
	defer requery.Stop()
	for {
		select {
		case a := <-q.answers:
			for _, d := range collect(found, tags, a) {
				if cfg.Heard != nil {
					f := *found[d]
					f.Addrs = slices.Clone(f.Addrs)
					cfg.Heard(f)
				}
			}
		case <-requery.C:
			q.send() // a lost query is retried at the next one
			every = min(2*every, requeryMax)
			requery.Reset(every)
		case <-timeout.C:
			return results(found, devices), nil
		case <-ctx.Done():
			return results(found, devices), nil
		}
	}
}

// results lists found in the order of devices.
func results(found map[identity.ID]*Found, devices []identity.ID) []Found {
	var out []Found
	for _, d := range devices {
		if f, ok := found[d]; ok {
			out = append(out, *f)
			delete(found, d) // a device listed twice is returned once
		}
	}
	return out
}

// An answer is one mDNS message and where it came from.
type answer struct {
	msg  *dns.Msg
	from netip.AddrPort
	zone string // the interface an IPv6 answer came in on
}

// collect adds the devices a answers for to found, and returns those it
// added an address to.
func collect(found map[identity.ID]*Found, tags map[Tag]match, a answer) (grew []identity.ID) {
	var srvs []*dns.SRV
	hosts := make(map[string][]netip.Addr)
	txts := make(map[string][]string)
	for _, rr := range append(a.msg.Answer, a.msg.Extra...) {
		name := strings.ToLower(rr.Header().Name)
		switch rr := rr.(type) {
		case *dns.SRV:
			srvs = append(srvs, rr)
		case *dns.TXT:
			txts[name] = rr.Txt
		case *dns.A:
			if ad, ok := netip.AddrFromSlice(rr.A.To4()); ok {
				hosts[name] = append(hosts[name], ad)
			}
		case *dns.AAAA:
			if ad, ok := netip.AddrFromSlice(rr.AAAA); ok {
				hosts[name] = append(hosts[name], ad)
			}
		}
	}
	for _, srv := range srvs {
		name := strings.ToLower(srv.Hdr.Name)
		label, rest, _ := strings.Cut(name, ".")
		if rest != serviceName {
			continue
		}
		tag, ok := ParseTag(label)
		if !ok {
			continue
		}
		m, ok := tags[tag]
		if !ok {
			continue // someone else's service, or a device we do not know
		}
		if txt, ok := txts[name]; ok && !slices.Contains(txt, txtVersion) {
			continue // an announcement of another version
		}
		f := found[m.device]
		if f == nil {
			f = &Found{Device: m.device, Window: m.window}
		}
		f.Window = max(f.Window, m.window)
		for _, ad := range hosts[strings.ToLower(srv.Target)] {
			if ad.Is6() && ad.IsLinkLocalUnicast() {
				if a.zone == "" {
					continue // unusable without the interface it is on
				}
				ad = ad.WithZone(a.zone)
			}
			ap := netip.AddrPortFrom(ad, srv.Port)
			if len(f.Addrs) < MaxAddrs && !slices.Contains(f.Addrs, ap) {
				f.Addrs = append(f.Addrs, ap)
				if !slices.Contains(grew, m.device) {
					grew = append(grew, m.device)
				}
			}
		}
		if len(f.Addrs) > 0 {
			found[m.device] = f
		}
	}
	return grew
}

// A querier sends the service query out of each interface and reads the
// answers, which responders send to the query's source address.
type querier struct {
	ifaces  []*net.Interface
	c4, c6  *net.UDPConn // c6 is nil where IPv6 is off
	msg     []byte
	answers chan answer
	done    chan struct{}
	wg      sync.WaitGroup
}

func newQuerier(ifaces []*net.Interface) (*querier, error) {
	if len(ifaces) == 0 {
		return nil, errors.New("no interface that is up and can multicast")
	}
	m := new(dns.Msg)
	m.SetQuestion(serviceName, dns.TypePTR)
	m.Id = 0 // RFC 6762 section 18.1
	m.RecursionDesired = false
	// Ask for unicast answers (RFC 6762 section 5.4): the querier does
	// not listen on the mDNS port, which another responder may hold.
	m.Question[0].Qclass |= 1 << 15
	msg, err := m.Pack()
	if err != nil {
		return nil, fmt.Errorf("pack the mDNS query: %w", err)
	}
	q := &querier{ifaces: ifaces, msg: msg, answers: make(chan answer, 16), done: make(chan struct{})}
	if q.c4, err = net.ListenUDP("udp4", &net.UDPAddr{}); err != nil {
		return nil, fmt.Errorf("open a UDP socket: %w", err)
	}
	q.wg.Go(func() { q.read(q.c4, nil) })
	if q.c6, err = net.ListenUDP("udp6", &net.UDPAddr{}); err == nil {
		// The interface of each answer, which names the zone of the
		// link-local addresses it carries.
		p6 := ipv6.NewPacketConn(q.c6)
		if p6.SetControlMessage(ipv6.FlagInterface, true) == nil {
			q.wg.Go(func() { q.read(q.c6, p6) })
		} else {
			q.c6.Close()
			q.c6 = nil
		}
	} else {
		q.c6 = nil // IPv6 is off
	}
	return q, nil
}

// send sends the query out of every interface, over IPv4 and IPv6; it
// fails only if no copy could be sent.
func (q *querier) send() error {
	p4 := ipv4.NewPacketConn(q.c4)
	var errs []error
	sent := false
	for _, ifi := range q.ifaces {
		if err := p4.SetMulticastInterface(ifi); err == nil {
			if _, err := q.c4.WriteToUDPAddrPort(q.msg, mdnsGroup4); err == nil {
				sent = true
			} else {
				errs = append(errs, fmt.Errorf("%s: %w", ifi.Name, err))
			}
		}
		if q.c6 != nil {
			// The zone by index: Go maps zone names to indexes through
			// a process-wide cache, which a process that spans network
			// namespaces cannot trust.
			to := netip.AddrPortFrom(mdnsGroup6.WithZone(strconv.Itoa(ifi.Index)), mdnsPort)
			if _, err := q.c6.WriteToUDPAddrPort(q.msg, to); err == nil {
				sent = true
			} else {
				errs = append(errs, fmt.Errorf("%s: %w", ifi.Name, err))
			}
		}
	}
	if !sent {
		return fmt.Errorf("send the mDNS query: %w", errors.Join(append(errs, errors.New("no interface took it"))...))
	}
	return nil
}

// read passes the mDNS answers c receives to q.answers until q closes;
// p6, if not nil, is c's IPv6 view, which tells the interface an answer
// came in on.
func (q *querier) read(c *net.UDPConn, p6 *ipv6.PacketConn) {
	buf := make([]byte, 9000)
	for {
		var (
			n    int
			from netip.AddrPort
			zone string
			err  error
		)
		if p6 == nil {
			n, from, err = c.ReadFromUDPAddrPort(buf)
		} else {
			var cm *ipv6.ControlMessage
			var src net.Addr
			n, cm, src, err = p6.ReadFrom(buf)
			if u, ok := src.(*net.UDPAddr); ok {
				from = u.AddrPort()
			}
			if cm != nil {
				zone = q.zone(cm.IfIndex)
			}
		}
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil {
			continue // an ICMP error from an earlier send; keep reading
		}
		var m dns.Msg
		if m.Unpack(buf[:n]) != nil || !m.Response {
			continue
		}
		a := answer{msg: &m, from: from, zone: zone}
		select {
		case q.answers <- a:
		case <-q.done:
			return
		}
	}
}

// zone returns the name of the interface with index i, as the caller's
// network namespace knows it.
func (q *querier) zone(i int) string {
	for _, ifi := range q.ifaces {
		if ifi.Index == i {
			return ifi.Name
		}
	}
	return strconv.Itoa(i)
}

// close stops the readers and waits for them.
func (q *querier) close() {
	close(q.done)
	q.c4.Close()
	if q.c6 != nil {
		q.c6.Close()
	}
	q.wg.Wait()
}
