package lan

import (
	"context"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/mdns"
	"github.com/miekg/dns"

	"github.com/burrow-tunnel/burrow/identity"
)

// Service is the DNS-SD service type a device announces, in the domain
// "local.".
const Service = "_burrow._udp"

// txtVersion is the whole TXT record of an announcement: its version and
// nothing else.
const txtVersion = "v=1"

// AnnounceConfig configures [Announce].
type AnnounceConfig struct {
	// Device is the announcing device's ID, the key of its tags. Required.
	Device identity.ID
	// Port is the device's direct-path UDP port, announced in the SRV
	// record. Required.
	Port uint16
	// Interface names the one interface to announce on. Empty: every
	// interface that is up, not loopback, can multicast and has an
	// address.
	Interface string
	// Addrs are the addresses announced. Empty: the addresses of each
	// interface announced on, each on its own interface. Link-local IPv6
	// addresses are announced too: the client adds the zone of the
	// interface the answer came in on.
	Addrs []netip.Addr
	// Now is the clock that picks the window. Nil: time.Now.
	Now func() time.Time
	// Logger receives the mDNS responder's complaints about malformed
	// queries, at debug level. Nil: slog.Default().
	Logger *slog.Logger
}

// An Announcer answers mDNS queries for [Service] with the device's
// current tag until [Announcer.Close].
//
// It answers from the tag of the window its clock is in at each query, so
// it moves to the next tag at the very moment the window changes, with no
// timer to fire late. It never announces unsolicited: hashicorp/mdns's
// responder only answers, which is all a client that queries needs.
type Announcer struct {
	servers []*mdns.Server // one per interface
	once    sync.Once
}

// Announce starts answering mDNS queries for the device on the LAN. It
// fails if no interface can be announced on, or none of them lets it join
// the mDNS multicast group.
func Announce(cfg AnnounceConfig) (*Announcer, error) {
	if cfg.Device.IsZero() {
		return nil, errors.New("lan: announce: no device ID given")
	}
	if cfg.Port == 0 {
		return nil, errors.New("lan: announce: no UDP port given: announce the direct path's port")
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	ifaces, err := interfaces(cfg.Interface)
	if err != nil {
		return nil, fmt.Errorf("lan: announce: %w", err)
	}
	a := &Announcer{}
	var errs []error
	for _, ifi := range ifaces {
		addrs := cfg.Addrs
		if len(addrs) == 0 {
			if addrs = ifaceAddrs(ifi); len(addrs) == 0 {
				continue
			}
		}
		z := &zone{device: cfg.Device, port: cfg.Port, now: cfg.Now}
		for _, ad := range addrs {
			z.ips = append(z.ips, net.IP(ad.Unmap().AsSlice()))
		}
		s, err := mdns.NewServer(&mdns.Config{
			Zone:   z,
			Iface:  ifi,
			Logger: log.New(slogWriter{cfg.Logger}, "", 0),
		})
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", ifi.Name, err))
			continue
		}
		a.servers = append(a.servers, s)
	}
	if len(a.servers) == 0 {
		errs = append(errs, errors.New("no interface to announce on"))
		return nil, fmt.Errorf("lan: announce on the LAN (mDNS, UDP port 5353): %w", errors.Join(errs...))
	}
	return a, nil
}

// Close stops answering. It is idempotent.
func (a *Announcer) Close() error {
	a.once.Do(func() {
		for _, s := range a.servers {
			s.Shutdown()
		}
	})
	return nil
}

// interfaces returns the named interface, or with no name every interface
// that is up, not loopback and can multicast.
func interfaces(name string) ([]*net.Interface, error) {
	if name != "" {
		ifi, err := net.InterfaceByName(name)
		if err != nil {
			return nil, fmt.Errorf("interface %q: %w", name, err)
		}
		return []*net.Interface{ifi}, nil
	}
	all, err := net.Interfaces()
	if err != nil {
		return nil, fmt.Errorf("list interfaces: %w", err)
	}
	var ifaces []*net.Interface
	for i := range all {
		f := all[i].Flags
		if f&net.FlagUp != 0 && f&net.FlagLoopback == 0 && f&net.FlagMulticast != 0 {
			ifaces = append(ifaces, &all[i])
		}
	}
	return ifaces, nil
}

// ifaceAddrs returns the unicast addresses of ifi.
func ifaceAddrs(ifi *net.Interface) []netip.Addr {
	as, err := ifi.Addrs()
	if err != nil {
		return nil
	}
	var addrs []netip.Addr
	for _, a := range as {
		if p, ok := a.(*net.IPNet); ok {
			if ad, ok := netip.AddrFromSlice(p.IP); ok && !ad.IsMulticast() {
				addrs = append(addrs, ad.Unmap())
			}
		}
	}
	return addrs
}

// A zone is the DNS-SD service of one interface, its names taken from
// the tag of the window the clock is in at each query. Safe for
// concurrent use (the responder asks from a goroutine per socket).
type zone struct {
	device identity.ID
	port   uint16
	ips    []net.IP
	now    func() time.Time

	mu     sync.Mutex
	window int64             // guarded by mu
	svc    *mdns.MDNSService // the service of window; guarded by mu
}

// Records answers q from the current window's service.
func (z *zone) Records(q dns.Question) []dns.RR {
	svc := z.service()
	if svc == nil {
		return nil
	}
	return svc.Records(q)
}

// service returns the service of the current window, made on first use.
func (z *zone) service() *mdns.MDNSService {
	w := Window(z.now())
	z.mu.Lock()
	defer z.mu.Unlock()
	if z.svc != nil && z.window == w {
		return z.svc
	}
	tag := TagOf(z.device, w).String()
	// The host name is the tag too: os.Hostname, the library's default,
	// would name the device for anyone listening.
	svc, err := mdns.NewMDNSService(tag, Service, "local.", tag+".local.", int(z.port), z.ips, []string{txtVersion})
	if err != nil {
		return nil // unreachable: every argument is checked
	}
	z.window, z.svc = w, svc
	return svc
}

// slogWriter turns the responder's log.Logger lines into debug records.
type slogWriter struct{ l *slog.Logger }

func (w slogWriter) Write(p []byte) (int, error) {
	w.l.Log(context.Background(), slog.LevelDebug, "lan: mdns responder", "line", strings.TrimSpace(string(p)))
	return len(p), nil
}
