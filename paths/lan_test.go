package paths

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/time/rate"
)

func TestOnLinkIn(t *testing.T) {
	prefixes := []netip.Prefix{
		netip.MustParsePrefix("192.168.1.7/24"),
		netip.MustParsePrefix("127.0.0.1/8"),
		netip.MustParsePrefix("2001:db8:1::5/64"),
	}
	for _, tc := range []struct {
		addr string
		want bool
	}{
		{"192.168.1.5", true},
		{"192.168.1.255", true},
		{"192.168.2.5", false},
		{"127.0.0.1", true},
		{"127.9.9.9", true},
		{"::ffff:192.168.1.5", true},
		{"2001:db8:1::77", true},
		{"2001:db8:2::77", false},
		{"8.8.8.8", false},
		{"fe80::1%eth0", true}, // link-local: the zone names the link
		{"fe80::1", false},     // link-local without a zone: which link?
	} {
		if got := onLinkIn(prefixes, netip.MustParseAddr(tc.addr)); got != tc.want {
			t.Errorf("onLinkIn(%s) = %v, want %v", tc.addr, got, tc.want)
		}
	}
	if onLinkIn(nil, netip.MustParseAddr("127.0.0.1")) {
		t.Error("on-link with no prefixes")
	}
}

// TestInterfacePrefixes: the host's own prefixes hold loopback.
func TestInterfacePrefixes(t *testing.T) {
	ps, err := interfacePrefixes()
	if err != nil {
		t.Fatal(err)
	}
	if !onLinkIn(ps, netip.MustParseAddr("127.0.0.1")) {
		t.Fatalf("127.0.0.1 not on-link in %v", ps)
	}
}

// lanTestTable returns a table that accepts LAN peers from 10.0.0.0/8, at
// the time *now, without a rate limit.
func lanTestTable(now *int64) *lanTable {
	t := newLANTable(func() int64 { return *now }, true, func() ([]netip.Prefix, error) {
		return []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}, nil
	})
	t.newOnes = rate.NewLimiter(rate.Inf, 0)
	return t
}

func lanAddr(i int) netip.AddrPort {
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}), 4242)
}

// TestLANHeard: only a handshake packet from an on-link address makes a
// LAN peer, and only on a table that accepts them; later packets find it.
func TestLANHeard(t *testing.T) {
	var now int64
	tab := lanTestTable(&now)
	if tab.heard(netip.MustParseAddrPort("192.0.2.1:4242"), true) != nil {
		t.Fatal("an off-link address made a LAN peer")
	}
	if tab.heard(lanAddr(1), false) != nil {
		t.Fatal("a packet of no handshake made a LAN peer")
	}
	p := tab.heard(lanAddr(1), true)
	if p == nil || p.String() != "lan/10.0.0.1:4242" {
		t.Fatalf("LAN peer %v", p)
	}
	if q := tab.heard(lanAddr(1), false); q != p {
		t.Fatalf("the next packet came from %v, want %v", q, p)
	}
	off := lanTestTable(&now)
	off.accept = false
	if off.heard(lanAddr(1), true) != nil {
		t.Fatal("a table that does not accept LAN peers made one")
	}
	if off.add(lanAddr(2), true) == nil || off.heard(lanAddr(2), false) == nil {
		t.Fatal("a LAN peer the agent asked for does not take its packets")
	}
}

// TestLANBound: past maxLANPeers, a new peer pushes out the one heard from
// least recently, unless every one was heard from lately; idle peers are
// forgotten, and one still written to comes back.
func TestLANBound(t *testing.T) {
	var now int64
	tab := lanTestTable(&now)
	peers := make([]*lanPeer, maxLANPeers)
	for i := range peers {
		now = int64(i)
		if peers[i] = tab.heard(lanAddr(i), true); peers[i] == nil {
			t.Fatalf("peer %d refused", i)
		}
	}
	now = maxLANPeers
	tab.heard(lanAddr(0), false) // peer 1 is now the least recent
	now += int64(lanLive)
	if tab.heard(lanAddr(maxLANPeers), true) == nil {
		t.Fatal("a new peer was refused, though old ones were quiet")
	}
	if n := tab.len(); n != maxLANPeers {
		t.Fatalf("%d peers, want %d", n, maxLANPeers)
	}
	if tab.lookup(lanAddr(1)) != nil || !peers[1].evicted.Load() {
		t.Fatal("the least recent peer is still there")
	}
	if tab.lookup(lanAddr(0)) != peers[0] {
		t.Fatal("a peer heard from lately was pushed out")
	}

	// All heard from lately: a new one is refused.
	for i := range maxLANPeers + 1 {
		tab.heard(lanAddr(i), false)
	}
	refused := tab.refused.Load()
	if tab.heard(lanAddr(maxLANPeers+1), true) != nil {
		t.Fatal("a new peer pushed out a live one")
	}
	if tab.refused.Load() != refused+1 || tab.len() != maxLANPeers {
		t.Fatalf("refused %d (was %d), %d peers", tab.refused.Load(), refused, tab.len())
	}

	// Idle: forgotten as the next one comes.
	now += int64(lanIdle)
	if tab.heard(lanAddr(maxLANPeers+1), true) == nil || tab.len() != 1 {
		t.Fatalf("%d peers after %v idle, want the new one only", tab.len(), lanIdle)
	}
	tab.sending(peers[0])
	if tab.lookup(lanAddr(0)) != peers[0] || peers[0].evicted.Load() {
		t.Fatal("a forgotten peer written to did not come back")
	}
}

// TestLANRate: new LAN peers are rate limited, and refusals counted.
func TestLANRate(t *testing.T) {
	now := int64(0)
	tab := newLANTable(func() int64 { return now }, true, func() ([]netip.Prefix, error) {
		return []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}, nil
	})
	const tries = 200
	made := 0
	for i := range tries {
		if tab.heard(lanAddr(i), true) != nil {
			made++
		}
	}
	if made >= tries || tab.refused.Load() != uint64(tries-made) {
		t.Fatalf("%d of %d new peers made, %d refused", made, tries, tab.refused.Load())
	}
	if made < lanNewBurst {
		t.Fatalf("%d new peers made, want a burst of %d", made, lanNewBurst)
	}
	// A known peer's packets are not limited.
	for range tries {
		if tab.heard(lanAddr(0), false) == nil {
			t.Fatal("a known peer's packet was refused")
		}
	}
}

// TestOnLinkCache: the prefixes are listed once per onLinkRefresh.
func TestOnLinkCache(t *testing.T) {
	calls := 0
	o := &onLink{list: func() ([]netip.Prefix, error) {
		calls++
		return []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}, nil
	}}
	for range 100 {
		if !o.contains(netip.MustParseAddr("10.1.2.3")) {
			t.Fatal("not on-link")
		}
	}
	if calls != 1 {
		t.Fatalf("prefixes listed %d times", calls)
	}
	o.at = o.at.Add(-onLinkRefresh - time.Second)
	o.contains(netip.MustParseAddr("10.1.2.3"))
	if calls != 2 {
		t.Fatalf("prefixes listed %d times after %v", calls, onLinkRefresh)
	}
}

// TestPrefixOf: an interface's address keeps its network's prefix; a mask
// that is not a prefix gives the address alone, not a /0.
func TestPrefixOf(t *testing.T) {
	for _, tc := range []struct {
		ipn  net.IPNet
		want string
	}{
		{net.IPNet{IP: net.ParseIP("192.168.1.20").To4(), Mask: net.CIDRMask(24, 32)}, "192.168.1.20/24"},
		{net.IPNet{IP: net.ParseIP("192.168.1.20"), Mask: net.CIDRMask(120, 128)}, "192.168.1.20/24"},
		{net.IPNet{IP: net.ParseIP("fd00::5"), Mask: net.CIDRMask(64, 128)}, "fd00::5/64"},
		{net.IPNet{IP: net.ParseIP("10.1.2.3").To4(), Mask: net.IPv4Mask(255, 0, 255, 0)}, "10.1.2.3/32"},
	} {
		p, ok := prefixOf(&tc.ipn)
		if !ok || p.String() != tc.want {
			t.Errorf("%v: %v %v, want %s", tc.ipn, p, ok, tc.want)
		}
	}
}
