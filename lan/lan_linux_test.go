//go:build linux

package lan

import (
	"context"
	"net/netip"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
	"go.uber.org/goleak"

	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/internal/testing/netns"
)

// t0 is a time in the middle of a window.
var t0 = time.Unix(1_800_000_000-1_800_000_000%600+300, 0)

// A clock is a fake clock tests move by hand.
type clock struct{ unix atomic.Int64 }

func newClock(t time.Time) *clock {
	c := &clock{}
	c.unix.Store(t.Unix())
	return c
}
func (c *clock) now() time.Time      { return time.Unix(c.unix.Load(), 0) }
func (c *clock) add(d time.Duration) { c.unix.Add(int64(d / time.Second)) }
func (c *clock) set(t time.Time)     { c.unix.Store(t.Unix()) }

// lanNet is a LAN: namespaces dev1, dev2 and cli on one bridge (in
// namespace br), their eth0 at 10.9.0.1, .2 and .3.
func lanNet(t *testing.T) *netns.Net {
	t.Helper()
	n := netns.New(t)
	n.Add("br", "dev1", "dev2", "cli")
	n.In("br", "ip", "link", "add", "br0", "type", "bridge", "mcast_snooping", "0")
	n.In("br", "ip", "link", "set", "br0", "up")
	for i, ns := range []string{"dev1", "dev2", "cli"} {
		port := "p" + ns
		n.Link("br", port, "", ns, "eth0", "10.9.0."+string(rune('1'+i))+"/24")
		n.In("br", "ip", "link", "set", port, "master", "br0")
	}
	return n
}

// TestFindBothFamilies: a device announcing an IPv4, a global IPv6 and
// a link-local IPv6 address is found at all three, the link-local one
// with the zone of the client's interface; and where IPv6 is off, IPv4
// alone works (hashicorp/mdns's responder binds IPv6 only if it can).
func TestFindBothFamilies(t *testing.T) {
	n := lanNet(t)
	cam1, cam2 := testID("cam1"), testID("cam2")
	c := newClock(t0)
	// nodad: the addresses are usable at once, not after duplicate
	// address detection (the kernel's own link-local ones are not yet).
	n.In("dev1", "ip", "addr", "add", "fd00::1/64", "dev", "eth0", "nodad")
	n.In("dev1", "ip", "addr", "add", "fe80::1/64", "dev", "eth0", "nodad")
	n.In("cli", "ip", "addr", "add", "fe80::3/64", "dev", "eth0", "nodad")
	var a *Announcer
	err := n.Do("dev1", func() error {
		var err error
		a, err = Announce(AnnounceConfig{Device: cam1, Port: 4001, Interface: "eth0", Now: c.now, Logger: testLogger(t)})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	got := find(t, n, c, cam1)
	if len(got) != 1 {
		t.Fatalf("found %+v, want cam1", got)
	}
	for _, ap := range []string{"10.9.0.1:4001", "[fd00::1]:4001", "[fe80::1%eth0]:4001"} {
		if !slices.Contains(got[0].Addrs, netip.MustParseAddrPort(ap)) {
			t.Errorf("found cam1 at %v, not at %s", got[0].Addrs, ap)
		}
	}

	for _, ns := range []string{"dev2", "cli"} {
		n.In(ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
	}
	announce(t, n, "dev2", cam2, "10.9.0.2", 4002, c)
	check(t, "IPv4 only", find(t, n, c, cam2), want(cam2, Window(t0), "10.9.0.2:4002"))
}

// announce starts an announcer for device in namespace ns, on eth0 with
// address addr, until the test ends.
func announce(t *testing.T, n *netns.Net, ns string, device identity.ID, addr string, port uint16, c *clock) *Announcer {
	t.Helper()
	var a *Announcer
	err := n.Do(ns, func() error {
		var err error
		a, err = Announce(AnnounceConfig{
			Device:    device,
			Port:      port,
			Interface: "eth0",
			Addrs:     []netip.Addr{netip.MustParseAddr(addr)},
			Now:       c.now,
			Logger:    testLogger(t),
		})
		return err
	})
	if err != nil {
		t.Fatalf("announce in %s: %v", ns, err)
	}
	t.Cleanup(func() { a.Close() })
	return a
}

// find runs Find in namespace cli on eth0 with the clock c.
func find(t *testing.T, n *netns.Net, c *clock, devices ...identity.ID) []Found {
	t.Helper()
	var found []Found
	err := n.Do("cli", func() error {
		var err error
		found, err = Find(t.Context(), FindConfig{Interface: "eth0", Timeout: time.Second, Now: c.now}, devices)
		return err
	})
	if err != nil {
		t.Fatalf("find: %v", err)
	}
	return found
}

func want(device identity.ID, window int64, addrs ...string) Found {
	f := Found{Device: device, Window: window}
	for _, a := range addrs {
		f.Addrs = append(f.Addrs, netip.MustParseAddrPort(a))
	}
	return f
}

func check(t *testing.T, what string, got []Found, want ...Found) {
	t.Helper()
	if !slices.EqualFunc(got, want, func(a, b Found) bool {
		return a.Device == b.Device && a.Window == b.Window && slices.Equal(a.Addrs, b.Addrs)
	}) {
		t.Errorf("%s: found %+v, want %+v", what, got, want)
	}
}

// TestFindOnLAN: a client finds the devices it knows on the LAN, each at
// its own address and port, and nothing for a device it does not know;
// the tags follow the devices' clocks from window to window, and the
// client matches the windows beside its own only.
func TestFindOnLAN(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t) })
	n := lanNet(t)
	cam1, cam2, stranger := testID("cam1"), testID("cam2"), testID("stranger")
	devClock, cliClock := newClock(t0), newClock(t0)
	announce(t, n, "dev1", cam1, "10.9.0.1", 4001, devClock)
	announce(t, n, "dev2", cam2, "10.9.0.2", 4002, devClock)
	w := Window(t0)

	check(t, "cam1", find(t, n, cliClock, cam1), want(cam1, w, "10.9.0.1:4001"))
	check(t, "a device not on the LAN", find(t, n, cliClock, stranger))
	check(t, "both devices", find(t, n, cliClock, stranger, cam2, cam1),
		want(cam2, w, "10.9.0.2:4002"), want(cam1, w, "10.9.0.1:4001"))

	// The devices move to the next window: their announcements carry the
	// next tag, which a client still in the window before matches, and so
	// does a client in the same window.
	devClock.add(WindowLength)
	check(t, "next window, client behind", find(t, n, cliClock, cam1), want(cam1, w+1, "10.9.0.1:4001"))
	cliClock.add(WindowLength)
	check(t, "next window", find(t, n, cliClock, cam1, cam2),
		want(cam1, w+1, "10.9.0.1:4001"), want(cam2, w+1, "10.9.0.2:4002"))
	// A client whose clock is two windows away matches nothing.
	cliClock.set(t0.Add(3 * WindowLength))
	check(t, "client two windows ahead", find(t, n, cliClock, cam1, cam2))
}

// TestAnnouncementHidesDevice: everything a device publishes, as a
// stranger on the LAN sees it, is the tag of the window, the version,
// the address and the port; nothing of it names the device, and the next
// window shares nothing with the last but address and port.
func TestAnnouncementHidesDevice(t *testing.T) {
	n := lanNet(t)
	cam1 := testID("cam1")
	c := newClock(t0)
	announce(t, n, "dev1", cam1, "10.9.0.1", 4001, c)
	first := published(t, n)
	tag := TagOf(cam1, Window(t0)).String()
	for _, s := range first {
		if strings.Contains(s, cam1.String()) || strings.Contains(s, cam1.Short()) {
			t.Errorf("published record %q names the device", s)
		}
	}
	wantRecs := []string{
		"PTR " + serviceName + " " + tag + "." + serviceName,
		"SRV " + tag + "." + serviceName + " " + tag + ".local. 4001",
		"A " + tag + ".local. 10.9.0.1",
		"TXT " + tag + "." + serviceName + " [v=1]",
	}
	slices.Sort(wantRecs)
	if !slices.Equal(first, wantRecs) {
		t.Errorf("published\n%s\nwant\n%s", strings.Join(first, "\n"), strings.Join(wantRecs, "\n"))
	}
	c.add(WindowLength)
	next := strings.Join(published(t, n), "\n")
	if strings.Contains(next, tag) {
		t.Errorf("the next window's records still carry the last tag %s:\n%s", tag, next)
	}
	if !strings.Contains(next, TagOf(cam1, Window(t0)+1).String()) {
		t.Errorf("the next window's records do not carry its tag:\n%s", next)
	}
}

// published asks the LAN from namespace cli for the service, as any host
// could, and returns every record of the answers, one line each, sorted
// and without duplicates.
func published(t *testing.T, n *netns.Net) []string {
	t.Helper()
	var recs []string
	err := n.Do("cli", func() error {
		ifaces, err := interfaces("eth0")
		if err != nil {
			return err
		}
		q, err := newQuerier(ifaces)
		if err != nil {
			return err
		}
		defer q.close()
		if err := q.send(); err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(t.Context(), time.Second)
		defer cancel()
		for {
			select {
			case a := <-q.answers:
				for _, rr := range append(a.msg.Answer, a.msg.Extra...) {
					recs = append(recs, record(rr))
				}
			case <-ctx.Done():
				return nil
			}
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(recs)
	return slices.Compact(recs)
}

func record(rr dns.RR) string {
	h := rr.Header().Name
	switch rr := rr.(type) {
	case *dns.PTR:
		return "PTR " + h + " " + rr.Ptr
	case *dns.SRV:
		return "SRV " + h + " " + rr.Target + " " + itoa(int(rr.Port))
	case *dns.A:
		return "A " + h + " " + rr.A.String()
	case *dns.AAAA:
		return "AAAA " + h + " " + rr.AAAA.String()
	case *dns.TXT:
		return "TXT " + h + " [" + strings.Join(rr.Txt, " ") + "]"
	}
	return rr.String()
}

// TestCloseStopsAnnouncing: after Close, the device is no longer found.
func TestCloseStopsAnnouncing(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t) })
	n := lanNet(t)
	cam1 := testID("cam1")
	c := newClock(t0)
	a := announce(t, n, "dev1", cam1, "10.9.0.1", 4001, c)
	check(t, "announced", find(t, n, c, cam1), want(cam1, Window(t0), "10.9.0.1:4001"))
	a.Close()
	a.Close() // idempotent
	check(t, "closed", find(t, n, c, cam1))
}

// TestFindHeard: Heard hands over a device the moment it answers, so a
// caller can stop listening long before the timeout.
func TestFindHeard(t *testing.T) {
	n := lanNet(t)
	cam1, cam2 := testID("cam1"), testID("cam2")
	c := newClock(t0)
	announce(t, n, "dev1", cam1, "10.9.0.1", 4001, c)
	var heard []Found
	var took time.Duration
	err := n.Do("cli", func() error {
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		began := time.Now()
		defer func() { took = time.Since(began) }()
		found, err := Find(ctx, FindConfig{Interface: "eth0", Timeout: 5 * time.Second, Now: c.now,
			Heard: func(f Found) {
				heard = append(heard, f)
				cancel()
			}}, []identity.ID{cam2, cam1})
		check(t, "returned", found, want(cam1, Window(t0), "10.9.0.1:4001"))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	check(t, "heard", heard, want(cam1, Window(t0), "10.9.0.1:4001"))
	if took >= 5*time.Second {
		t.Errorf("Find took %v: it listened to its timeout, not until the caller had what it wanted", took)
	}
}
