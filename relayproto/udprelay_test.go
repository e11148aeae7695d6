package relayproto

import (
	"bytes"
	"net/netip"
	"testing"
)

// TestUDPRelayCodec: every UDP relay datagram round-trips, the answers are
// never larger than what they answer, and the header is rewritten in
// place.
func TestUDPRelayCodec(t *testing.T) {
	tok, txid, tag := [16]byte{1, 2, 3}, [8]byte{9, 8, 7}, [UDPTagLen]byte{5, 5, 5, 5, 5, 5, 5, 5}

	bind := AppendUDPBind(nil, tok, txid)
	if gotTok, gotTx, err := ParseUDPBind(bind); err != nil || gotTok != tok || gotTx != txid || len(bind) != UDPBindLen {
		t.Fatalf("bind: %v %v %v, %d bytes", gotTok, gotTx, err, len(bind))
	}
	for _, addr := range []string{"192.0.2.7:4242", "[2001:db8::1]:65535"} {
		a := netip.MustParseAddrPort(addr)
		bound := AppendUDPBound(nil, txid, tag, a)
		if len(bound) > UDPBindLen {
			t.Fatalf("a bound of %d bytes for a bind of %d", len(bound), UDPBindLen)
		}
		gotTx, gotTag, gotAddr, err := ParseUDPBound(bound)
		if err != nil || gotTx != txid || gotTag != tag || gotAddr != a {
			t.Fatalf("bound %s: %v %v %v %v", addr, gotTx, gotTag, gotAddr, err)
		}
	}

	pkt := bytes.Repeat([]byte{0xc3}, MaxUDPPacket)
	send := append(AppendUDPData(nil, UDPSend, tag, 77), pkt...)
	if len(send) != MaxUDPDatagram {
		t.Fatalf("a send of the largest packet is %d bytes, want %d", len(send), MaxUDPDatagram)
	}
	typ, gotTag, ch, gotPkt, err := ParseUDPData(send)
	if err != nil || typ != UDPSend || gotTag != tag || ch != 77 || !bytes.Equal(gotPkt, pkt) {
		t.Fatalf("send: %x %v %d %v", typ, gotTag, ch, err)
	}
	other := [UDPTagLen]byte{6}
	PutUDPDataHeader(send, UDPRecv, other, 99)
	if typ, gotTag, ch, gotPkt, err := ParseUDPData(send); err != nil || typ != UDPRecv || gotTag != other || ch != 99 || !bytes.Equal(gotPkt, pkt) {
		t.Fatalf("rewritten to recv: %x %v %d %v", typ, gotTag, ch, err)
	}
	if _, _, _, _, err := ParseUDPData(append(send, 0)); err == nil {
		t.Fatal("a datagram over MaxUDPDatagram parsed")
	}
	if _, _, _, p, err := ParseUDPData(AppendUDPData(nil, UDPSend, tag, 1)); err != nil || len(p) != 0 {
		t.Fatalf("an empty packet: %v %d", err, len(p))
	}

	for _, typ := range []byte{UDPKeepalive, UDPAlive} {
		k := AppendUDPKeepalive(nil, typ, tag, 1<<40)
		gotTyp, gotTag, seq, err := ParseUDPKeepalive(k)
		if err != nil || gotTyp != typ || gotTag != tag || seq != 1<<40 || len(k) != UDPKeepaliveLen {
			t.Fatalf("keepalive %x: %x %v %d %v", typ, gotTyp, gotTag, seq, err)
		}
	}

	if r, err := ParseUDPRelay(AppendUDPRelay(nil, UDPRelay{Channel: 0xdeadbeef})); err != nil || r.Channel != 0xdeadbeef {
		t.Fatalf("relay extension: %v %v", r, err)
	}
	if _, err := ParseUDPRelay(AppendUDPRelay(nil, UDPRelay{})); err == nil {
		t.Fatal("channel 0 parsed")
	}
}

// TestUDPRelayTruncation: every proper prefix of each datagram fails to
// parse (a send or recv only below its header, since an empty packet is
// one).
func TestUDPRelayTruncation(t *testing.T) {
	tag := [UDPTagLen]byte{1}
	cases := []struct {
		name  string
		b     []byte
		parse func([]byte) error
		min   int // the shortest prefix that parses
	}{
		{"bind", AppendUDPBind(nil, [16]byte{1}, [8]byte{2}), func(b []byte) error { _, _, err := ParseUDPBind(b); return err }, UDPBindLen},
		{"bound4", AppendUDPBound(nil, [8]byte{2}, tag, netip.MustParseAddrPort("192.0.2.1:9")), func(b []byte) error { _, _, _, err := ParseUDPBound(b); return err }, -1},
		{"bound6", AppendUDPBound(nil, [8]byte{2}, tag, netip.MustParseAddrPort("[2001:db8::9]:9")), func(b []byte) error { _, _, _, err := ParseUDPBound(b); return err }, -1},
		{"send", append(AppendUDPData(nil, UDPSend, tag, 3), "packet"...), func(b []byte) error { _, _, _, _, err := ParseUDPData(b); return err }, UDPDataHeaderLen},
		{"keepalive", AppendUDPKeepalive(nil, UDPKeepalive, tag, 7), func(b []byte) error { _, _, _, err := ParseUDPKeepalive(b); return err }, UDPKeepaliveLen},
		{"relay extension", AppendUDPRelay(nil, UDPRelay{Channel: 1}), func(b []byte) error { _, err := ParseUDPRelay(b); return err }, 4},
	}
	for _, c := range cases {
		if err := c.parse(c.b); err != nil {
			t.Fatalf("%s: the whole datagram: %v", c.name, err)
		}
		for n := range len(c.b) {
			err := c.parse(c.b[:n])
			if parses := c.min >= 0 && n >= c.min; parses != (err == nil) {
				t.Errorf("%s: prefix of %d bytes: %v", c.name, n, err)
			}
		}
	}
}

// TestUDPRelayTypes: the datagram types are told from QUIC packets (bit
// 0x40 clear) and from each other and the binding service's.
func TestUDPRelayTypes(t *testing.T) {
	seen := map[byte]bool{UDPBindingRequest: true, UDPBindingResponse: true}
	for _, typ := range []byte{UDPBind, UDPBound, UDPSend, UDPRecv, UDPKeepalive, UDPAlive} {
		if typ&0x40 != 0 || seen[typ] {
			t.Errorf("type 0x%02x: bit 0x40 set, or used twice", typ)
		}
		seen[typ] = true
	}
	if UDPDataHeaderLen != 13 || MaxUDPPacket != 1439 {
		t.Errorf("header %d, largest packet %d: the format says 13 and 1439", UDPDataHeaderLen, MaxUDPPacket)
	}
}

func FuzzUDPRelay(f *testing.F) {
	tag := [UDPTagLen]byte{1, 2}
	f.Add(AppendUDPBind(nil, [16]byte{1}, [8]byte{2}))
	f.Add(AppendUDPBound(nil, [8]byte{2}, tag, netip.MustParseAddrPort("192.0.2.1:9")))
	f.Add(append(AppendUDPData(nil, UDPSend, tag, 3), "packet"...))
	f.Add(AppendUDPKeepalive(nil, UDPAlive, tag, 7))
	f.Fuzz(func(t *testing.T, b []byte) {
		if tok, txid, err := ParseUDPBind(b); err == nil && !bytes.Equal(AppendUDPBind(nil, tok, txid)[:25], b[:25]) {
			t.Fatalf("bind %x does not re-encode", b)
		}
		if txid, tg, a, err := ParseUDPBound(b); err == nil && !bytes.Equal(AppendUDPBound(nil, txid, tg, a), b) {
			t.Fatalf("bound %x does not re-encode", b)
		}
		if typ, tg, ch, p, err := ParseUDPData(b); err == nil && !bytes.Equal(append(AppendUDPData(nil, typ, tg, ch), p...), b) {
			t.Fatalf("data %x does not re-encode", b)
		}
		if typ, tg, seq, err := ParseUDPKeepalive(b); err == nil && !bytes.Equal(AppendUDPKeepalive(nil, typ, tg, seq), b) {
			t.Fatalf("keepalive %x does not re-encode", b)
		}
		ParseUDPRelay(b)
	})
}
