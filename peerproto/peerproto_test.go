package peerproto

import (
	"bytes"
	"encoding/hex"
	"errors"
	"io"
	"net/netip"
	"reflect"
	"testing"

	"github.com/burrow-tunnel/burrow/identity"
)

// testKey is the key of every test: bytes 0 to 31.
var testKey = func() []byte {
	k := make([]byte, KeyLen)
	for i := range k {
		k[i] = byte(i)
	}
	return k
}()

var (
	initiatorID = PathID(testKey, true)
	responderID = PathID(testKey, false)
)

// encodings returns one valid encoding of every message, with what it
// parses to. The probe is the smallest: every proper prefix of each is
// truncated.
func encodings() []struct {
	name  string
	b     []byte
	parse func([]byte) (any, error)
	want  any
} {
	probe := Probe{PathID: initiatorID, TxID: [8]byte{7: 42}, Len: ProbeMinLen}.Signed(testKey)
	reply := Reply{PathID: responderID, TxID: [8]byte{7: 5}, Received: 1 << 40}.Signed(testKey)
	opener := Opener{PathID: initiatorID}
	cands := Candidates{Round: 7, Addrs: []netip.AddrPort{
		netip.MustParseAddrPort("203.0.113.7:40000"),
		netip.MustParseAddrPort("[2001:db8::1]:4000"),
	}}
	noCands := Candidates{Round: 1, Addrs: []netip.AddrPort{}}
	datagram := func(b []byte) (any, error) { return ParseDatagram(b) }
	signal := func(b []byte) (any, error) { return ParseSignal(b) }
	control := func(b []byte) (any, error) { return ParseControl(b) }
	return []struct {
		name  string
		b     []byte
		parse func([]byte) (any, error)
		want  any
	}{
		{"probe", AppendProbe(nil, probe), datagram, probe},
		{"reply", AppendReply(nil, reply), datagram, reply},
		{"opener", AppendOpener(nil, opener), datagram, opener},
		{"candidates", AppendCandidates(nil, cands), signal, cands},
		{"no-candidates", AppendCandidates(nil, noCands), signal, noCands},
		{"ready", AppendReady(nil, Ready{Round: 3}), signal, Ready{Round: 3}},
		{"lost", AppendLost(nil, Lost{Round: 1 << 31}), signal, Lost{Round: 1 << 31}},
		{"relays", AppendRelays(nil, Relays{Relays: []RelayChannel{{Relay: identity.ID{1, 2}, Channel: 7}, {Relay: identity.ID{3}, Channel: 1 << 31}}}), signal,
			Relays{Relays: []RelayChannel{{Relay: identity.ID{1, 2}, Channel: 7}, {Relay: identity.ID{3}, Channel: 1 << 31}}}},
		{"no relays", AppendRelays(nil, Relays{Round: 2}), signal, Relays{Round: 2, Relays: []RelayChannel{}}},
		{"path", AppendPathMessage(nil, PathMessage{Signal: AppendReady(nil, Ready{Round: 3})}), control,
			PathMessage{Signal: AppendReady(nil, Ready{Round: 3})}},
		{"ping", AppendPing(nil, Ping{ID: 0x0102030405060708}), control, Ping{ID: 0x0102030405060708}},
		{"pong", AppendPong(nil, Pong{ID: 1<<64 - 1}), control, Pong{ID: 1<<64 - 1}},
	}
}

// TestVectors: the encodings are byte for byte those of the first
// version, which peers already speak.
func TestVectors(t *testing.T) {
	h := func(s string) []byte {
		b, err := hex.DecodeString(s)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	mine, theirs := [8]byte(h("51e37679fd7ae42f")), [8]byte(h("06b475b9fe7f3b61"))
	if initiatorID != mine || responderID != theirs {
		t.Fatalf("path IDs %x, %x; want %x, %x", initiatorID, responderID, mine, theirs)
	}
	if ExporterLabel != "burrow direct path" || KeyLen != 32 || MaxPacketLen != 1452 {
		t.Fatalf("key %q/%d, packets of %d bytes", ExporterLabel, KeyLen, MaxPacketLen)
	}
	big := h("2151e37679fd7ae42f000000000000002bac6a798b51f50c191beeb9db8f9d1633")
	big = append(big, make([]byte, 60-len(big))...)
	for _, tc := range []struct {
		name string
		got  []byte
		want []byte
	}{
		{"probe", AppendProbe(nil, Probe{PathID: mine, TxID: [8]byte{7: 42}, Len: ReplyLen}.Signed(testKey)),
			h("2151e37679fd7ae42f000000000000002aae08aa89c32174a043c7e36bd33f93ba0000000000000000")},
		{"padded probe", AppendProbe(nil, Probe{PathID: mine, TxID: [8]byte{7: 43}, Len: 60}.Signed(testKey)), big},
		{"reply", AppendReply(nil, Reply{PathID: theirs, TxID: [8]byte{7: 5}, Received: 7}.Signed(testKey)),
			h("2206b475b9fe7f3b610000000000000005000000000000000730f2adee69eebc50ebf7138070e2ce92")},
		{"opener", AppendOpener(nil, Opener{PathID: mine}), h("2351e37679fd7ae42f")},
		{"candidates", AppendCandidates(nil, Candidates{Round: 7, Addrs: []netip.AddrPort{
			netip.MustParseAddrPort("203.0.113.7:40000"),
			netip.MustParseAddrPort("192.0.2.1:4000"),
			netip.MustParseAddrPort("[2001:db8::1]:4000"),
		}}), h("01000000070304cb0071079c4004c00002010fa00620010db80000000000000000000000010fa0")},
		{"ready", AppendReady(nil, Ready{Round: 258}), h("0200000102")},
		{"lost", AppendLost(nil, Lost{Round: 3}), h("0300000003")},
		{"ping", AppendPing(nil, Ping{ID: 0x0102030405060708}), h("0200080102030405060708")},
		{"pong", AppendPong(nil, Pong{ID: 0xf102030405060708}), h("030008f102030405060708")},
		{"path", AppendPathMessage(nil, PathMessage{Signal: []byte{2, 0, 0, 1, 2}}), h("0100050200000102")},
	} {
		if !bytes.Equal(tc.got, tc.want) {
			t.Errorf("%s:\n got %x\nwant %x", tc.name, tc.got, tc.want)
		}
	}
	// And they parse back, the MACs valid.
	p, err := ParseDatagram(big)
	if pr, ok := p.(Probe); err != nil || !ok || pr.Len != 60 || !pr.Valid(testKey) {
		t.Fatalf("padded probe: %#v, %v", p, err)
	}
}

func TestRoundTrip(t *testing.T) {
	for _, tc := range encodings() {
		got, err := tc.parse(tc.b)
		if err != nil || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s: got %#v, %v; want %#v", tc.name, got, err, tc.want)
		}
	}
	// Appending appends.
	for _, tc := range encodings() {
		b := []byte("prefix")
		switch m := tc.want.(type) {
		case Probe:
			b = AppendProbe(b, m)
		case Reply:
			b = AppendReply(b, m)
		case Opener:
			b = AppendOpener(b, m)
		case Candidates:
			b = AppendCandidates(b, m)
		case Ready:
			b = AppendReady(b, m)
		case Lost:
			b = AppendLost(b, m)
		case Relays:
			b = AppendRelays(b, m)
		case PathMessage:
			b = AppendPathMessage(b, m)
		case Ping:
			b = AppendPing(b, m)
		case Pong:
			b = AppendPong(b, m)
		}
		if !bytes.Equal(b, append([]byte("prefix"), tc.b...)) {
			t.Errorf("%s: appended % x", tc.name, b)
		}
	}
}

// TestTruncation: every proper prefix of a valid encoding fails, as
// truncated.
func TestTruncation(t *testing.T) {
	for _, tc := range encodings() {
		for n := range len(tc.b) {
			got, err := tc.parse(tc.b[:n])
			if !errors.Is(err, ErrTruncated) {
				t.Errorf("%s cut to %d bytes: %#v, %v", tc.name, n, got, err)
			}
		}
	}
}

func TestParseTable(t *testing.T) {
	probe := AppendProbe(nil, Probe{PathID: initiatorID, TxID: [8]byte{7: 1}, Len: MaxPacketLen}.Signed(testKey))
	reply := AppendReply(nil, Reply{PathID: responderID, TxID: [8]byte{7: 1}}.Signed(testKey))
	v4 := []byte{4, 192, 0, 2, 1, 0x0f, 0xa0}
	mapped := append([]byte{6, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 0, 2, 1}, 0x0f, 0xa0)
	for _, tc := range []struct {
		name  string
		parse func([]byte) (any, error)
		b     []byte
		want  any   // if err is nil
		err   error // errors.Is
	}{
		{"full-size probe", datagram, probe, Probe{PathID: initiatorID, TxID: [8]byte{7: 1},
			MAC: [16]byte(probe[17:33]), Len: MaxPacketLen}, nil},
		{"probe padding not checked", datagram, append(bytes.Clone(probe[:ReplyLen-1]), 9),
			Probe{PathID: initiatorID, TxID: [8]byte{7: 1}, MAC: [16]byte(probe[17:33]), Len: ReplyLen}, nil},
		{"short probe", datagram, probe[:33], nil, ErrTruncated},
		{"long reply", datagram, append(bytes.Clone(reply), 0), nil, ErrMalformed},
		{"type 0", datagram, make([]byte, 10), nil, ErrUnknownType},
		{"long opener", datagram, append([]byte{0x23}, make([]byte, 9)...), nil, ErrMalformed},
		{"quic packet", datagram, []byte{0x40, 1, 2, 3}, nil, ErrUnknownType},
		{"binding response", datagram, []byte{0x32, 1, 2, 3, 4, 5, 6, 7, 8}, nil, ErrUnknownType},
		{"empty datagram", datagram, nil, nil, ErrTruncated},
		{"candidates v4", signal, append([]byte{1, 0, 0, 0, 2, 1}, v4...),
			Candidates{Round: 2, Addrs: []netip.AddrPort{netip.MustParseAddrPort("192.0.2.1:4000")}}, nil},
		{"candidates mapped", signal, append([]byte{1, 0, 0, 0, 2, 1}, mapped...),
			Candidates{Round: 2, Addrs: []netip.AddrPort{netip.MustParseAddrPort("192.0.2.1:4000")}}, nil},
		{"17 candidates", signal, []byte{1, 0, 0, 0, 2, MaxCandidates + 1}, nil, ErrMalformed},
		{"family 5", signal, []byte{1, 0, 0, 0, 2, 1, 5, 1, 2, 3, 4, 0, 1}, nil, ErrMalformed},
		{"bytes after candidates", signal, append(append([]byte{1, 0, 0, 0, 2, 1}, v4...), 0), nil, ErrMalformed},
		{"long ready", signal, []byte{2, 0, 0, 0, 1, 0}, nil, ErrMalformed},
		{"long lost", signal, []byte{3, 0, 0, 0, 1, 0}, nil, ErrMalformed},
		{"5 relays", signal, []byte{4, 0, 0, 0, 0, MaxRelays + 1}, nil, ErrMalformed},
		{"bytes after relays", signal, append(AppendRelays(nil, Relays{Relays: []RelayChannel{{Channel: 1}}}), 0), nil, ErrMalformed},
		{"newer signal", signal, []byte{9, 0, 0, 0, 1, 1, 2, 3}, nil, ErrUnknownType},
		{"short newer signal", signal, []byte{9, 0, 0, 0}, nil, ErrTruncated},
		{"empty path message", control, []byte{1, 0, 0}, PathMessage{Signal: []byte{}}, nil},
		{"largest path message", control, append([]byte{1, 4, 0}, make([]byte, MaxControlLen)...),
			PathMessage{Signal: make([]byte, MaxControlLen)}, nil},
		{"too large", control, append([]byte{1, 4, 1}, make([]byte, MaxControlLen+1)...), nil, ErrMalformed},
		{"largest length field", control, []byte{1, 0xff, 0xff}, nil, ErrMalformed},
		{"short ping", control, []byte{2, 0, 7, 1, 2, 3, 4, 5, 6, 7}, nil, ErrMalformed},
		{"long pong", control, []byte{3, 0, 9, 1, 2, 3, 4, 5, 6, 7, 8, 9}, nil, ErrMalformed},
		{"bytes after", control, []byte{1, 0, 1, 7, 0}, nil, ErrMalformed},
		{"newer control", control, []byte{99, 0, 2, 1, 2}, nil, ErrUnknownType},
	} {
		got, err := tc.parse(tc.b)
		if tc.err != nil {
			if !errors.Is(err, tc.err) {
				t.Errorf("%s: %#v, %v; want %v", tc.name, got, err, tc.err)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s: %#v, %v; want %#v", tc.name, got, err, tc.want)
		}
	}
}

func datagram(b []byte) (any, error) { return ParseDatagram(b) }
func signal(b []byte) (any, error)   { return ParseSignal(b) }
func control(b []byte) (any, error)  { return ParseControl(b) }

// TestMAC: a MAC holds only under its key and over the fields it covers.
func TestMAC(t *testing.T) {
	other := bytes.Repeat([]byte{1}, KeyLen)
	p := Probe{PathID: initiatorID, TxID: [8]byte{7: 9}}.Signed(testKey)
	r := Reply{PathID: responderID, TxID: [8]byte{7: 9}, Received: 3}.Signed(testKey)
	if !p.Valid(testKey) || !r.Valid(testKey) {
		t.Fatal("signed messages not valid")
	}
	if p.Valid(other) || r.Valid(other) {
		t.Fatal("valid under another key")
	}
	p2, r2 := p, r
	p2.TxID[0] ^= 1
	r2.Received++
	if p2.Valid(testKey) || r2.Valid(testKey) {
		t.Fatal("valid after a field changed")
	}
	// A probe's MAC is not a reply's: the type is covered.
	if r3 := (Reply{PathID: p.PathID, TxID: p.TxID, MAC: p.MAC}); r3.Valid(testKey) {
		t.Fatal("a probe's MAC passes as a reply's")
	}
	if initiatorID == responderID || PathID(other, true) == initiatorID {
		t.Fatal("path IDs collide")
	}
}

func TestLimits(t *testing.T) {
	var addrs []netip.AddrPort
	for i := range MaxCandidates + 3 {
		addrs = append(addrs, netip.AddrPortFrom(netip.AddrFrom16([16]byte{0x20, 1, 15: byte(i)}), 443))
	}
	b := AppendCandidates(nil, Candidates{Round: 1, Addrs: addrs})
	if len(b) != MaxSignalLen || MaxSignalLen > MaxControlLen {
		t.Fatalf("candidates of %d bytes, limit %d, control messages %d", len(b), MaxSignalLen, MaxControlLen)
	}
	m, err := ParseSignal(b)
	if c, ok := m.(Candidates); err != nil || !ok || !reflect.DeepEqual(c.Addrs, addrs[:MaxCandidates]) {
		t.Fatalf("%v, %v", m, err)
	}
	if ProbeMinLen < ReplyLen || ReplyLen != 41 || OpenerLen != 9 {
		t.Fatal("a reply may be larger than its probe")
	}
}

// TestReadControl: a stream of messages reads one by one, unknown types
// skipped; bad lengths are refused from the header, before the payload.
func TestReadControl(t *testing.T) {
	var b []byte
	b = AppendPing(b, Ping{ID: 0x0102030405060708})
	b = AppendPathMessage(b, PathMessage{Signal: bytes.Repeat([]byte{7}, MaxControlLen)})
	b = append(b, 99, 0, 2, 1, 2) // a newer peer's type
	b = AppendPong(b, Pong{ID: 5})
	r := bytes.NewReader(b)
	buf := make([]byte, MaxControlLen)
	for i, want := range []any{
		Ping{ID: 0x0102030405060708},
		PathMessage{Signal: bytes.Repeat([]byte{7}, MaxControlLen)},
		ErrUnknownType,
		Pong{ID: 5},
		io.EOF,
	} {
		m, err := ReadControl(r, buf)
		if werr, ok := want.(error); ok {
			if !errors.Is(err, werr) {
				t.Fatalf("message %d: %v, %v; want %v", i, m, err, werr)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(m, want) {
			t.Fatalf("message %d: %#v, %v; want %#v", i, m, err, want)
		}
	}
	for _, tc := range []struct {
		b    []byte
		err  error
		left int // bytes not read
	}{
		{[]byte{1, 0x04, 0x01, 1, 2}, ErrMalformed, 2}, // longer than MaxControlLen: refused before reading it
		{[]byte{1, 0xff, 0xff}, ErrMalformed, 0},
		{[]byte{2, 0, 7, 1, 2, 3, 4, 5, 6, 7}, ErrMalformed, 7},
		{[]byte{3, 0, 9, 1, 2, 3, 4, 5, 6, 7, 8, 9}, ErrMalformed, 9},
		{[]byte{1, 0, 5, 1, 2}, io.ErrUnexpectedEOF, 0},
		{[]byte{1, 0}, io.ErrUnexpectedEOF, 0},
	} {
		r := bytes.NewReader(tc.b)
		if m, err := ReadControl(r, buf); !errors.Is(err, tc.err) || r.Len() != tc.left {
			t.Errorf("% x: %v, %v, %d bytes left; want %v, %d left", tc.b, m, err, r.Len(), tc.err, tc.left)
		}
	}
	// A buffer too small is not written past.
	m, err := ReadControl(bytes.NewReader(AppendPathMessage(nil, PathMessage{Signal: []byte{1, 2, 3}})), nil)
	if pm, ok := m.(PathMessage); err != nil || !ok || !bytes.Equal(pm.Signal, []byte{1, 2, 3}) {
		t.Fatalf("without a buffer: %v, %v", m, err)
	}
}

// FuzzDirect reads arbitrary bytes as a direct-path datagram and as a
// signalling message: nothing may panic, and what parses encodes to what
// parses the same (a probe to the same fields and size).
func FuzzDirect(f *testing.F) {
	for _, tc := range encodings() {
		f.Add(tc.b)
	}
	f.Add(AppendProbe(nil, Probe{PathID: initiatorID, TxID: [8]byte{7: 1}, Len: MaxPacketLen}.Signed(testKey)))
	f.Fuzz(func(t *testing.T, b []byte) {
		if m, err := ParseDatagram(b); err == nil {
			var again []byte
			switch m := m.(type) {
			case Probe:
				again = AppendProbe(nil, m)
				if len(again) != len(b) || !bytes.Equal(again[:ProbeMinLen-8], b[:ProbeMinLen-8]) {
					t.Fatalf("% x parsed to %#v, which encodes to % x", b, m, again)
				}
			case Reply:
				again = AppendReply(nil, m)
			case Opener:
				again = AppendOpener(nil, m)
			}
			if _, ok := m.(Probe); !ok && !bytes.Equal(again, b) {
				t.Fatalf("% x parsed to %#v, which encodes to % x", b, m, again)
			}
		}
		if m, err := ParseSignal(b); err == nil {
			var again []byte
			switch m := m.(type) {
			case Candidates:
				again = AppendCandidates(nil, m)
			case Ready:
				again = AppendReady(nil, m)
			case Lost:
				again = AppendLost(nil, m)
			case Relays:
				again = AppendRelays(nil, m)
			}
			// IPv4-mapped candidates re-encode as IPv4: compare what parses.
			if m2, err := ParseSignal(again); err != nil || !reflect.DeepEqual(m2, m) {
				t.Fatalf("% x parsed to %#v; its encoding % x to %#v, %v", b, m, again, m2, err)
			}
		}
	})
}

// FuzzControl reads arbitrary bytes as a control stream: nothing may
// panic, and the messages read encode back to the bytes they came from
// (those of unknown types are passed on as they were).
func FuzzControl(f *testing.F) {
	var stream []byte
	for _, tc := range encodings() {
		if _, ok := tc.want.(ControlMessage); ok {
			f.Add(tc.b)
			stream = append(stream, tc.b...)
		}
	}
	f.Add(append(stream, 99, 0, 1, 0))
	f.Add([]byte{1, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		if m, err := ParseControl(b); err == nil {
			if pm, ok := m.(PathMessage); ok && len(pm.Signal) > MaxControlLen {
				t.Fatalf("a signal of %d bytes", len(pm.Signal))
			}
		}
		r := bytes.NewReader(b)
		buf := make([]byte, MaxControlLen)
		var again []byte
		for {
			start := len(b) - r.Len()
			m, err := ReadControl(r, buf)
			end := len(b) - r.Len()
			if errors.Is(err, ErrUnknownType) {
				again = append(again, b[start:end]...)
				continue
			}
			if err != nil {
				break
			}
			if _, err := ParseControl(b[start:end]); err != nil {
				t.Fatalf("% x reads but does not parse: %v", b[start:end], err)
			}
			switch m := m.(type) {
			case PathMessage:
				again = AppendPathMessage(again, m)
			case Ping:
				again = AppendPing(again, m)
			case Pong:
				again = AppendPong(again, m)
			}
			if !bytes.Equal(again, b[:end]) {
				t.Fatalf("% x re-encodes to % x", b[:end], again)
			}
		}
	})
}
