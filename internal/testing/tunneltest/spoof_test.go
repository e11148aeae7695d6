//go:build linux

package tunneltest

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/internal/testing/linktest"
	"github.com/burrow-tunnel/burrow/internal/testing/netns"
	"github.com/burrow-tunnel/burrow/relay"
	"github.com/burrow-tunnel/burrow/relaylink"
	"github.com/burrow-tunnel/burrow/relayproto"
)

// TestRelayUDPSpoofedSource: an attacker on another network sends the
// relay's UDP port datagrams whose IP source is forged to be the address a
// client's agent is bound from (real IP headers, written on a raw socket).
// Not knowing the binding's tag, its sends to the device's channel and its
// keepalives are dropped as wrong_tag; a bind with a made-up token as
// unknown_token; a send from a forged address nobody is bound from as
// unbound. None is forwarded, none is answered (the client gets nothing the
// attacker asked for), and the client and device go on exchanging packets.
func TestRelayUDPSpoofedSource(t *testing.T) {
	n := &nsNet{Net: netns.New(t)}
	n.Add("r", "a", "x")
	n.Link("r", "ra", "10.66.1.1/24", "a", "ar", "10.66.1.2/24")
	n.Link("r", "rx", "10.66.2.1/24", "x", "xr", "10.66.2.2/24")
	n.In("x", "ip", "route", "add", "default", "via", "10.66.2.1")
	// No reverse-path filter at the relay: a packet whose source is on
	// another of its networks is let in, as on a relay whose upstream does
	// no ingress filtering.
	for _, iface := range []string{"all", "default", "rx"} {
		n.In("r", "sysctl", "-q", "-w", "net.ipv4.conf."+iface+".rp_filter=0")
	}

	n.startRelay(t, "r", "10.66.1.1", 0)
	srv, tcpAddr := n.relay, n.relayAddr
	udpAddr := netip.AddrPortFrom(netip.MustParseAddr("10.66.1.1"), uint16(n.relayUDP))
	cliID := NewIdentity(t)
	dev := spoofAgent(t, n, srv, tcpAddr, udpAddr, relayproto.RoleDevice, NewIdentity(t), cliID)
	cli := spoofAgent(t, n, srv, tcpAddr, udpAddr, relayproto.RoleClient, cliID)
	cli.send(dev.channel, []byte("before"))
	dev.recv(t, cli, []byte("before"))

	x := rawSocket(t, n, "x")
	var guessed [relayproto.UDPTagLen]byte
	rand.Read(guessed[:])
	var token [16]byte
	rand.Read(token[:])
	const sends, keepalives = 200, 20
	stranger := netip.MustParseAddrPort("10.66.1.99:4000")
	for range sends {
		x.send(t, cli.addr, udpAddr, append(relayproto.AppendUDPData(nil, relayproto.UDPSend, guessed, dev.channel), make([]byte, 1200)...))
	}
	for i := range keepalives {
		x.send(t, cli.addr, udpAddr, relayproto.AppendUDPKeepalive(nil, relayproto.UDPKeepalive, guessed, uint64(i)))
	}
	x.send(t, cli.addr, udpAddr, relayproto.AppendUDPBind(nil, token, [8]byte{1}))
	x.send(t, stranger, udpAddr, append(relayproto.AppendUDPData(nil, relayproto.UDPSend, guessed, dev.channel), 1, 2, 3))

	want := map[relay.UDPDrop]uint64{relay.UDPDropWrongTag: sends + keepalives, relay.UDPDropUnknownToken: 1, relay.UDPDropUnbound: 1}
	deadline := time.Now().Add(10 * time.Second)
	for {
		st := srv.Stats()
		done := true
		for d, w := range want {
			done = done && st.UDPDropped[d] >= w
		}
		if done {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("drops %v, want %v: the forged datagrams did not reach the relay", st.UDPDropped, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
	st := srv.Stats()
	for _, d := range relay.UDPDrops {
		if st.UDPDropped[d] != want[d] {
			t.Errorf("dropped %s: %d, want %d", d, st.UDPDropped[d], want[d])
		}
	}
	if st.UDPForwarded != 1 {
		t.Errorf("forwarded %d datagrams, want 1 (the client's own)", st.UDPForwarded)
	}
	// Nothing reached either agent: no forwarded send, no alive, no bound.
	for _, a := range []*spoofedAgent{dev, cli} {
		a.sock.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		if n, from, err := a.sock.ReadFromUDPAddrPort(a.buf); err == nil {
			t.Errorf("the %s got %d bytes from %v: %x", a.role, n, from, a.buf[:min(n, 16)])
		}
	}
	cli.send(dev.channel, []byte("after"))
	dev.recv(t, cli, []byte("after"))
	dev.send(cli.channel, []byte("and back"))
	cli.recv(t, dev, []byte("and back"))
}

// A spoofedAgent is an agent in namespace a: a relay link, and a UDP
// socket bound (and confirmed) at the relay's UDP port.
type spoofedAgent struct {
	role    string
	channel uint32
	tag     [relayproto.UDPTagLen]byte
	sock    *net.UDPConn
	addr    netip.AddrPort // the socket's, as the relay sees it
	relay   netip.AddrPort
	buf     []byte
	t       *testing.T
}

// spoofAgent attaches id with role from namespace a; a device allows the
// clients named.
func spoofAgent(t *testing.T, n *nsNet, srv *relay.Server, tcpAddr string, udpAddr netip.AddrPort,
	role relayproto.Role, id *identity.Identity, allow ...*identity.Identity) *spoofedAgent {
	t.Helper()
	at := linktest.AttachUDP(t, relaylink.Config{
		Relay: relaylink.RelayConfig{Addr: tcpAddr, ID: srv.ID()}, Identity: id, Role: role, Instance: 1, Dial: n.Dialer("a"),
	}, linktest.State(role, allow...))
	a := &spoofedAgent{role: role.String(), channel: at.Channel, relay: udpAddr, buf: make([]byte, 2048), t: t}
	err := n.Do("a", func() error {
		var err error
		a.sock, err = net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(10, 66, 1, 2)})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.sock.Close() })
	a.addr = a.sock.LocalAddr().(*net.UDPAddr).AddrPort()
	txid := [8]byte{4, 2}
	a.write(relayproto.AppendUDPBind(nil, at.Token, txid))
	gotTx, tag, seen, err := relayproto.ParseUDPBound(a.next(t))
	if err != nil || gotTx != txid || seen != a.addr {
		t.Fatalf("bound: %v %v %v", gotTx, seen, err)
	}
	a.tag = tag
	a.write(relayproto.AppendUDPKeepalive(nil, relayproto.UDPKeepalive, a.tag, 1))
	if typ, _, _, err := relayproto.ParseUDPKeepalive(a.next(t)); err != nil || typ != relayproto.UDPAlive {
		t.Fatalf("alive: %v", err)
	}
	return a
}

func (a *spoofedAgent) write(p []byte) {
	if _, err := a.sock.WriteToUDPAddrPort(p, a.relay); err != nil {
		a.t.Fatal(err)
	}
}

// send sends pkt to channel over the UDP relay path.
func (a *spoofedAgent) send(channel uint32, pkt []byte) {
	a.write(append(relayproto.AppendUDPData(nil, relayproto.UDPSend, a.tag, channel), pkt...))
}

// next returns the next datagram from the relay.
func (a *spoofedAgent) next(t *testing.T) []byte {
	t.Helper()
	a.sock.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, from, err := a.sock.ReadFromUDPAddrPort(a.buf)
	if err != nil || from != a.relay {
		t.Fatalf("the %s: no datagram from the relay (%v from %v)", a.role, err, from)
	}
	return a.buf[:n]
}

// recv expects the next datagram to be a recv of pkt from the agent from.
func (a *spoofedAgent) recv(t *testing.T, from *spoofedAgent, pkt []byte) {
	t.Helper()
	typ, tag, ch, got, err := relayproto.ParseUDPData(a.next(t))
	if err != nil || typ != relayproto.UDPRecv || tag != a.tag || ch != from.channel || !bytes.Equal(got, pkt) {
		t.Fatalf("the %s got %q (%v), want %q from channel %d", a.role, got, err, pkt, from.channel)
	}
}

// A rawSender writes IPv4 packets whole, IP header included, so that it
// can forge their source.
type rawSender struct{ fd int }

// rawSocket opens a raw IPv4 socket in namespace ns.
func rawSocket(t *testing.T, n *nsNet, ns string) *rawSender {
	t.Helper()
	r := &rawSender{fd: -1}
	err := n.Do(ns, func() error {
		var err error
		r.fd, err = unix.Socket(unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_RAW)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(r.fd) })
	return r
}

// send sends payload in a UDP datagram from src to dst, whatever src is.
// The kernel fills in the IP header's length and checksum; the UDP
// checksum is left out, as IPv4 allows.
func (r *rawSender) send(t *testing.T, src, dst netip.AddrPort, payload []byte) {
	t.Helper()
	pkt := make([]byte, 28, 28+len(payload))
	pkt[0], pkt[8], pkt[9] = 0x45, 64, unix.IPPROTO_UDP // version and header length, TTL, protocol
	s4, d4 := src.Addr().As4(), dst.Addr().As4()
	copy(pkt[12:16], s4[:])
	copy(pkt[16:20], d4[:])
	binary.BigEndian.PutUint16(pkt[20:], src.Port())
	binary.BigEndian.PutUint16(pkt[22:], dst.Port())
	binary.BigEndian.PutUint16(pkt[24:], uint16(8+len(payload)))
	pkt = append(pkt, payload...)
	binary.BigEndian.PutUint16(pkt[2:], uint16(len(pkt)))
	if err := unix.Sendto(r.fd, pkt, 0, &unix.SockaddrInet4{Addr: d4}); err != nil {
		t.Fatal(err)
	}
}
