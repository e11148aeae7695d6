package relay

import (
	"crypto/tls"
	"io"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/relayproto"
)

// refusedFrom sends a client hello as a fresh key from local and returns
// the relay's refusal.
func refusedFrom(t *testing.T, local, addr string) relayproto.Refuse {
	t.Helper()
	a := connectFrom(t, local, addr)
	a.hello(newIdentity(t), relayproto.RoleClient, 1, 1, a.exporter())
	return a.refusal()
}

// TestClientLimits: one address holds at most MaxClientsPerIP attached
// clients and the relay MaxClients in all; past them a client is refused
// with a code that says which. A client process coming back takes its own
// place, devices are never counted, and a place that is freed is taken
// again.
func TestClientLimits(t *testing.T) {
	srv, addr := serve(t, Config{AllowDevice: allowAll, MaxClientsPerIP: 3, MaxClients: 5})
	ids := []*identity.Identity{newIdentity(t), newIdentity(t), newIdentity(t)}
	var held []*agent
	for _, id := range ids {
		held = append(held, attachFrom(t, "127.0.0.1", addr, id, relayproto.RoleClient))
	}
	if f := refusedFrom(t, "127.0.0.1", addr); f.Code != relayproto.RefuseTooMany || !strings.Contains(f.Message, "127.0.0.1") {
		t.Fatalf("a fourth client from one address: %+v, want %s", f, relayproto.RefuseTooMany)
	}
	// The same client process (key and instance) reattaching replaces its
	// old attachment rather than needing room.
	again := attachFrom(t, "127.0.0.1", addr, ids[0], relayproto.RoleClient)
	if typ, p := held[0].read(); typ != relayproto.FrameGoAway {
		t.Fatalf("the replaced attachment got %s %q, want go-away", typ, p)
	}
	held[0] = again

	attachFrom(t, "127.0.0.2", addr, newIdentity(t), relayproto.RoleClient)
	attachFrom(t, "127.0.0.2", addr, newIdentity(t), relayproto.RoleClient)
	if f := refusedFrom(t, "127.0.0.3", addr); f.Code != relayproto.RefuseOverloaded {
		t.Fatalf("a sixth client in all: %+v, want %s", f, relayproto.RefuseOverloaded)
	}
	// Devices are not held back by clients.
	for range 3 {
		attachFrom(t, "127.0.0.1", addr, newIdentity(t), relayproto.RoleDevice)
	}
	if st := srv.Stats(); st.Clients != 5 || st.Devices != 3 || st.ClientsRefused != 2 {
		t.Fatalf("stats %+v, want 5 clients, 3 devices, 2 refused", st)
	}
	// A place freed is a place again.
	held[1].conn.Close()
	deadline := time.Now().Add(5 * time.Second)
	for srv.Stats().Clients != 4 {
		if time.Now().After(deadline) {
			t.Fatal("the closed client is still counted")
		}
		time.Sleep(5 * time.Millisecond)
	}
	attachFrom(t, "127.0.0.1", addr, newIdentity(t), relayproto.RoleClient)
}

// expectGoAway reads until a go-away and returns it.
func (a *agent) expectGoAway(within time.Duration) relayproto.GoAway {
	a.t.Helper()
	a.conn.SetReadDeadline(time.Now().Add(within))
	for {
		typ, n, err := relayproto.ReadHeader(a.br)
		if err != nil {
			a.t.Fatalf("no go-away within %v: %v", within, err)
		}
		p := make([]byte, n)
		if _, err := io.ReadFull(a.br, p); err != nil {
			a.t.Fatal(err)
		}
		if typ == relayproto.FrameGoAway {
			f, err := relayproto.ParseGoAway(p)
			if err != nil {
				a.t.Fatal(err)
			}
			return f
		}
	}
}

// alive reports whether the relay still answers a's ping.
func (a *agent) alive() bool {
	a.t.Helper()
	if _, err := a.conn.Write(append(relayproto.AppendHeader(nil, relayproto.FramePing, 8), "are you?"...)); err != nil {
		return false
	}
	a.conn.SetReadDeadline(time.Now().Add(2 * time.Second))
	for {
		typ, n, err := relayproto.ReadHeader(a.br)
		if err != nil {
			return false
		}
		p := make([]byte, n)
		if _, err := io.ReadFull(a.br, p); err != nil {
			return false
		}
		switch typ {
		case relayproto.FramePong:
			return true
		case relayproto.FrameGoAway:
			return false
		}
	}
}

// TestUnusedClientsClosed: a client that no attached device
// allows is closed after the grace period with go-away "unused" and a
// wait before it comes back; one that a device lists, or that is pairing
// with a listed invite, stays; and a listed client whose device has left
// goes too, a grace period later.
func TestUnusedClientsClosed(t *testing.T) {
	const grace = 300 * time.Millisecond
	srv, addr := serve(t, Config{AllowDevice: allowAll, ClientGrace: grace})
	devID, friendID := newIdentity(t), newIdentity(t)
	dev := attach(t, addr, devID, relayproto.RoleDevice)
	token := [32]byte{9}
	dev.write(relayproto.FrameAccess, relayproto.AppendAccess(nil, relayproto.AccessFirst|relayproto.AccessLast, []relayproto.AccessEntry{
		{Kind: relayproto.AccessClient, Value: friendID.ID()},
		{Kind: relayproto.AccessInvite, Value: token},
	}))
	dev.write(relayproto.FramePing, []byte("applied!"))
	for {
		if typ, p := dev.read(); typ == relayproto.FramePong && string(p) == "applied!" {
			break
		}
	}
	friend := attach(t, addr, friendID, relayproto.RoleClient)
	pairer := attach(t, addr, newIdentity(t), relayproto.RoleClient)
	pairer.write(relayproto.FramePairIntent, relayproto.AppendPairIntent(nil, relayproto.PairIntent{Device: devID.ID(), Token: token}))
	stranger := attach(t, addr, newIdentity(t), relayproto.RoleClient)
	start := time.Now()

	ga := stranger.expectGoAway(5 * grace)
	if took := time.Since(start); ga.Reason != relayproto.GoAwayUnused || ga.RetryAfterMillis < uint32(unusedRetryAfter/time.Millisecond) || took < grace {
		t.Fatalf("stranger: %+v after %v, want %s after at least %v with a wait", ga, took, relayproto.GoAwayUnused, grace)
	}
	time.Sleep(grace)
	if !friend.alive() || !pairer.alive() {
		t.Fatal("a client the device allows was closed")
	}

	// The device leaves: its friend is of no use on this relay any more.
	dev.conn.Close()
	if ga := friend.expectGoAway(5 * grace); ga.Reason != relayproto.GoAwayUnused {
		t.Fatalf("friend of a departed device: %+v", ga)
	}
	if st := srv.Stats(); st.ClientsUnused < 2 {
		t.Fatalf("stats %+v, want 2 or more unused", st)
	}
}

// TestStrangerLearnsNothing: a client the device has not allowed gets the
// same answer whether the device is attached or not; a client it allowed
// hears that it is offline, and since when.
func TestStrangerLearnsNothing(t *testing.T) {
	srv, addr := serve(t, Config{AllowDevice: allowAll})
	devID, friendID := newIdentity(t), newIdentity(t)
	dev := attach(t, addr, devID, relayproto.RoleDevice)
	dev.allow(friendID)
	friend := attach(t, addr, friendID, relayproto.RoleClient)
	stranger := attach(t, addr, newIdentity(t), relayproto.RoleClient)

	gone := func(a *agent) relayproto.PeerGone {
		t.Helper()
		a.sendTo(devID.ID(), "anyone there?")
		typ, p := a.read()
		g, err := relayproto.ParsePeerGone(p)
		if typ != relayproto.FramePeerGone || err != nil {
			t.Fatalf("got %s %v, want peer-gone", typ, err)
		}
		return g
	}
	online := gone(stranger)
	dev.conn.Close()
	deadline := time.Now().Add(5 * time.Second)
	for srv.Stats().Devices != 0 {
		if time.Now().After(deadline) {
			t.Fatal("the device's attachment did not end")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if offline := gone(friend); offline.Reason != relayproto.GoneOffline || offline.LastSeenUnix == 0 {
		t.Fatalf("the device's friend hears %+v, want offline with when it was last seen", offline)
	}
	if after := gone(stranger); after != online || online.Reason != relayproto.GoneUnreachable || online.LastSeenUnix != 0 {
		t.Fatalf("a stranger hears %+v while the device is attached and %+v after, want the same (%s, no last-seen)",
			online, after, relayproto.GoneUnreachable)
	}
	// And the same as of a device that never was.
	nobody := newIdentity(t).ID()
	stranger.sendTo(nobody, "?")
	_, p := stranger.read()
	if g, _ := relayproto.ParsePeerGone(p); g.Reason != online.Reason || g.LastSeenUnix != 0 {
		t.Fatalf("a device that never was: %+v", g)
	}
}

// TestUDPBindingLimits: an attachment's binding token is answered only
// from the address family its agent came in on, and only udpAnswers times
// in a window.
func TestUDPBindingLimits(t *testing.T) {
	pc, err := net.ListenPacket("udp", "[::]:0")
	if err != nil {
		t.Skipf("no dual-stack UDP socket: %v", err)
	}
	port := pc.LocalAddr().(*net.UDPAddr).Port
	_, _, binding := serveUDP(t, pc) // attached over IPv4
	req := relayproto.AppendBindingRequest(nil, binding.Token, [8]byte{1})
	ask := func(to string) bool {
		t.Helper()
		c, err := net.Dial("udp", to)
		if err != nil {
			t.Skipf("no %s: %v", to, err)
		}
		defer c.Close()
		c.Write(req)
		c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		_, err = c.Read(make([]byte, 64))
		return err == nil
	}
	v4 := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	v6 := net.JoinHostPort("::1", strconv.Itoa(port))
	if ask(v6) {
		t.Fatal("a token of an IPv4 attachment was answered over IPv6")
	}
	for i := range udpAnswers {
		if !ask(v4) {
			t.Fatalf("request %d of the attachment's own family was not answered", i+1)
		}
	}
	if ask(v4) {
		t.Fatalf("request %d within %v was answered", udpAnswers+1, udpWindow)
	}
}

// TestOffersOnlyHTTP1: the relay's TLS offers http/1.1 in ALPN, never h2,
// which it does not speak.
func TestOffersOnlyHTTP1(t *testing.T) {
	_, addr := serve(t, Config{AllowDevice: allowAll})
	conn, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2", "http/1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if got := conn.ConnectionState().NegotiatedProtocol; got != "http/1.1" {
		t.Fatalf("negotiated %q, want http/1.1", got)
	}
	if _, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"}}); err == nil {
		t.Fatal("a client offering only h2 completed a handshake")
	}
}

// TestAllowIndex: the count of devices that allow each client follows
// attaches, replacements, new lists and detaches, and ends empty.
func TestAllowIndex(t *testing.T) {
	srv, addr := serve(t, Config{AllowDevice: allowAll, ClientGrace: -1})
	devID, cliID := newIdentity(t), newIdentity(t)
	cli := attach(t, addr, cliID, relayproto.RoleClient)
	c := srv.routes.appendClients(nil)[0]
	want := func(allowed bool, what string) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for srv.allowed(c) != allowed {
			if time.Now().After(deadline) {
				t.Fatalf("%s: allowed %v, want %v", what, !allowed, allowed)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	first := attach(t, addr, devID, relayproto.RoleDevice)
	want(false, "attached with an empty list")
	first.allow(cliID)
	want(true, "listed")
	second := attach(t, addr, devID, relayproto.RoleDevice) // replaces the first, empty list
	want(false, "replaced by an attachment with an empty list")
	second.allow(cliID)
	want(true, "listed by the new attachment")
	second.allow()
	want(false, "a new list without the client")
	second.allow(cliID)
	second.conn.Close()
	want(false, "the device detached")
	srv.idx.mu.Lock()
	left, counted := len(srv.idx.counts), len(srv.idx.counted)
	srv.idx.mu.Unlock()
	if left != 0 || counted != 0 {
		t.Fatalf("index holds %d clients and %d devices after every device left", left, counted)
	}
	cli.conn.Close()
}

// TestOfflineMemory: a detached device is remembered with the clients it
// allowed, as 8-byte prefixes, only if they are few; a long list is not
// kept at all, so that offline devices cost little however long their
// lists were.
func TestOfflineMemory(t *testing.T) {
	var entries []relayproto.AccessEntry
	var ids []identity.ID
	for range maxOfflineClients + 1 {
		id := newIdentity(t).ID()
		ids = append(ids, id)
		entries = append(entries, relayproto.AccessEntry{Kind: relayproto.AccessClient, Value: id})
	}
	few := newOffline(time.Now(), newAccessSet(entries[:maxOfflineClients]))
	for _, id := range ids[:maxOfflineClients] {
		if !few.allowed(id) {
			t.Fatalf("client %s of a short list forgotten", id.Short())
		}
	}
	if few.allowed(ids[maxOfflineClients]) || few.allowed(newIdentity(t).ID()) {
		t.Fatal("a client not on the list counts as allowed")
	}
	many := newOffline(time.Now(), newAccessSet(entries))
	if many.clients != nil || many.allowed(ids[0]) {
		t.Fatalf("a list of %d was kept: %d entries", len(entries), len(many.clients))
	}
}

// TestIPKey: clients are counted per IPv4 address and per IPv6 /64 (a
// host usually holds a whole /64), IPv4-mapped IPv6 as IPv4.
func TestIPKey(t *testing.T) {
	for _, tc := range []struct {
		addr net.Addr
		want string
	}{
		{&net.TCPAddr{IP: net.ParseIP("192.0.2.7"), Port: 1}, "192.0.2.7"},
		{&net.TCPAddr{IP: net.ParseIP("::ffff:192.0.2.7"), Port: 1}, "192.0.2.7"},
		{&net.TCPAddr{IP: net.ParseIP("2001:db8:1:2:aaaa:bbbb:cccc:dddd"), Port: 1}, "2001:db8:1:2::"},
		{&net.TCPAddr{IP: net.ParseIP("2001:db8:1:2::1"), Port: 1}, "2001:db8:1:2::"},
		{&net.UDPAddr{IP: net.ParseIP("2001:db8:1:3::1"), Port: 1}, "2001:db8:1:3::"},
		{&net.UnixAddr{Name: "/x", Net: "unix"}, "invalid IP"},
	} {
		if got := ipKey(tc.addr).String(); got != tc.want {
			t.Errorf("ipKey(%v) = %s, want %s", tc.addr, got, tc.want)
		}
	}
}

// TestClientLimitDefaults: the zero Config bounds clients at 10,000 in
// all and 256 per address, and closes unused ones after 20s; a negative
// grace never closes them.
func TestClientLimitDefaults(t *testing.T) {
	if l := newClientLimits(Config{}); l.max != 10_000 || l.perIP != 256 || l.grace != 20*time.Second {
		t.Fatalf("defaults %+v", l)
	}
	if l := newClientLimits(Config{ClientGrace: -1}); l.grace != 0 {
		t.Fatalf("negative grace: %+v", l)
	}
}
