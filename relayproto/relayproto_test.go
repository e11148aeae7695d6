package relayproto

import (
	"bytes"
	"crypto/ed25519"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"testing"

	"github.com/burrow-tunnel/burrow/identity"
)

var (
	testKey      = ed25519.NewKeyFromSeed(bytes.Repeat([]byte{7}, 32))
	testPub      = testKey.Public().(ed25519.PublicKey)
	testExporter = bytes.Repeat([]byte{0xee}, ExporterLen)
	testAddr     = Addr{ID: identity.IDOf(testPub), Instance: 0x0102030405060708}
)

func sign(b []byte) []byte { return ed25519.Sign(testKey, b) }

// encodings returns one valid payload per frame type, with the value it
// decodes to.
func encodings() []struct {
	name  string
	t     FrameType
	p     []byte
	parse func([]byte) (any, error)
	want  any
} {
	ch := ClientHello{MinVersion: 1, MaxVersion: 3, Role: RoleClient, Instance: 42, PublicKey: testPub,
		Extensions: []Extension{{Type: 9, Value: []byte("token")}, {Type: 1, Value: []byte{}}}}
	sh := ServerHello{Version: 1, KeepAliveMillis: 15000, PublicKey: testPub, ObservedAddr: "192.0.2.1:4242"}
	rf := Refuse{Code: RefuseNotAllowed, Message: "device is not allowed"}
	pg := PeerGone{Peer: testAddr, Reason: GoneOffline, LastSeenUnix: 1700000000}
	ga := GoAway{Reason: GoAwayShutdown, RetryAfterMillis: 500, Message: "bye"}
	dr := Drain{WithinMillis: 30000, Message: "relay is draining"}
	acc := []AccessEntry{{Kind: AccessClient, Value: [32]byte{1, 2, 3}}, {Kind: AccessInvite, Value: [32]byte{9}}}
	pi := PairIntent{Device: testAddr.ID, Token: [32]byte{7, 7}}
	rd := Redirect{Peer: testAddr, Relay: identity.ID{4, 2}, Addr: "relay-b.example.net:443"}
	return []struct {
		name  string
		t     FrameType
		p     []byte
		parse func([]byte) (any, error)
		want  any
	}{
		{"client-hello", FrameClientHello, AppendClientHello(nil, ch, testExporter, sign),
			func(b []byte) (any, error) { return ParseClientHello(b, testExporter) }, ch},
		{"server-hello", FrameServerHello, AppendServerHello(nil, sh, testExporter, sign),
			func(b []byte) (any, error) { return ParseServerHello(b, testExporter) }, sh},
		{"refuse", FrameRefuse, AppendRefuse(nil, rf),
			func(b []byte) (any, error) { return ParseRefuse(b) }, rf},
		{"peer-gone", FramePeerGone, AppendPeerGone(nil, pg),
			func(b []byte) (any, error) { return ParsePeerGone(b) }, pg},
		{"go-away", FrameGoAway, AppendGoAway(nil, ga),
			func(b []byte) (any, error) { return ParseGoAway(b) }, ga},
		{"drain", FrameDrain, AppendDrain(nil, dr),
			func(b []byte) (any, error) { return ParseDrain(b) }, dr},
		{"access", FrameAccess, AppendAccess(nil, AccessFirst|AccessLast, acc),
			func(b []byte) (any, error) {
				flags, e, err := ParseAccess(b, nil)
				return struct {
					Flags   byte
					Entries []AccessEntry
				}{flags, e}, err
			}, struct {
				Flags   byte
				Entries []AccessEntry
			}{AccessFirst | AccessLast, acc}},
		{"pair-intent", FramePairIntent, AppendPairIntent(nil, pi),
			func(b []byte) (any, error) { return ParsePairIntent(b) }, pi},
		{"redirect", FrameRedirect, AppendRedirect(nil, rd),
			func(b []byte) (any, error) { return ParseRedirect(b) }, rd},
		{"ping", FramePing, []byte("12345678"),
			func(b []byte) (any, error) { return ParsePing(b) }, [8]byte([]byte("12345678"))},
	}
}

func TestRoundTrip(t *testing.T) {
	for _, tc := range encodings() {
		t.Run(tc.name, func(t *testing.T) {
			if uint32(len(tc.p)) > tc.t.MaxLen() {
				t.Fatalf("encoding of %d bytes exceeds the type's limit %d", len(tc.p), tc.t.MaxLen())
			}
			got, err := tc.parse(tc.p)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

// Every proper prefix of a valid encoding fails cleanly.
func TestTruncation(t *testing.T) {
	for _, tc := range encodings() {
		t.Run(tc.name, func(t *testing.T) {
			for n := range len(tc.p) {
				if _, err := tc.parse(tc.p[:n]); err == nil {
					t.Fatalf("prefix of %d/%d bytes parsed without error", n, len(tc.p))
				}
			}
		})
	}
	full := AppendPacketHeader(nil, FrameSendPacket, testAddr, 0)
	for n := range HeaderLen {
		if _, _, err := ParseHeader(full[:n]); !errors.Is(err, ErrTruncated) {
			t.Fatalf("header prefix of %d bytes: err = %v, want ErrTruncated", n, err)
		}
	}
	for n := range AddrLen {
		if _, _, err := ParsePacket(full[HeaderLen : HeaderLen+n]); !errors.Is(err, ErrTruncated) {
			t.Fatalf("packet prefix of %d bytes: err = %v, want ErrTruncated", n, err)
		}
	}
}

func TestHelloSignatureBinding(t *testing.T) {
	ch := ClientHello{MinVersion: 1, MaxVersion: 1, Role: RoleDevice, Instance: 1, PublicKey: testPub}
	p := AppendClientHello(nil, ch, testExporter, sign)
	// Another TLS connection has another exporter value: a replayed hello
	// does not verify there.
	other := bytes.Repeat([]byte{0xef}, ExporterLen)
	if _, err := ParseClientHello(p, other); !errors.Is(err, ErrBadSignature) {
		t.Fatalf("replayed on another connection: err = %v, want ErrBadSignature", err)
	}
	// Any changed byte breaks the signature (or the parse).
	for i := range len(p) {
		q := bytes.Clone(p)
		q[i] ^= 0x40
		if _, err := ParseClientHello(q, testExporter); err == nil {
			t.Fatalf("hello with byte %d flipped parsed", i)
		}
	}
	// The client and server contexts differ: a client hello is no server
	// hello.
	sh := AppendServerHello(nil, ServerHello{Version: 1, PublicKey: testPub}, testExporter, sign)
	if _, err := ParseClientHello(sh, testExporter); err == nil {
		t.Fatal("server hello parsed as client hello")
	}
}

func TestHeaderLimits(t *testing.T) {
	tests := []struct {
		name string
		t    FrameType
		n    uint32
		ok   bool
	}{
		{"max packet", FrameSendPacket, AddrLen + MaxPacketLen, true},
		{"packet over limit", FrameSendPacket, AddrLen + MaxPacketLen + 1, false},
		{"hello at limit", FrameClientHello, MaxHelloLen, true},
		{"hello over limit", FrameClientHello, MaxHelloLen + 1, false},
		{"ping of 9 bytes", FramePing, 9, false},
		{"unknown type up to MaxFrameLen", FrameType(0x7f), MaxFrameLen, true},
		{"unknown type over MaxFrameLen", FrameType(0x7f), MaxFrameLen + 1, false},
		{"length 0xFFFFFFFF", FrameRecvPacket, 0xFFFFFFFF, false},
		{"length 0xFFFFFFFF unknown type", FrameType(0xff), 0xFFFFFFFF, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			typ, n, err := ParseHeader(AppendHeader(nil, tc.t, int(tc.n)))
			if (err == nil) != tc.ok {
				t.Fatalf("err = %v, want ok=%v", err, tc.ok)
			}
			if err != nil && !errors.Is(err, ErrFrameTooLarge) {
				t.Fatalf("err = %v, want ErrFrameTooLarge", err)
			}
			if typ != tc.t || n != tc.n {
				t.Fatalf("parsed (%v, %d), want (%v, %d)", typ, n, tc.t, tc.n)
			}
			// A header is judged from its five bytes: nothing the size of
			// the length it claims is allocated (a refusal allocates only
			// its error), whatever that length.
			hdr := AppendHeader(nil, tc.t, int(tc.n))
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			for range 100 {
				ParseHeader(hdr)
			}
			runtime.ReadMemStats(&after)
			if per := (after.TotalAlloc - before.TotalAlloc) / 100; per > 1024 {
				t.Fatalf("%d bytes allocated per header", per)
			}
		})
	}
}

func TestParseMalformed(t *testing.T) {
	tests := []struct {
		name  string
		parse func() error
	}{
		{"refuse with trailing byte", func() error {
			_, err := ParseRefuse(append(AppendRefuse(nil, Refuse{Code: 1, Message: "x"}), 0))
			return err
		}},
		{"refuse message over limit", func() error {
			p := []byte{1, 0xff, 0xff}
			p = append(p, make([]byte, 0xffff)...)
			_, err := ParseRefuse(p)
			return err
		}},
		{"hello with min > max version", func() error {
			ch := ClientHello{MinVersion: 3, MaxVersion: 1, Role: RoleClient, PublicKey: testPub}
			_, err := ParseClientHello(AppendClientHello(nil, ch, testExporter, sign), testExporter)
			return err
		}},
		{"hello with version 0", func() error {
			ch := ClientHello{MinVersion: 0, MaxVersion: 1, Role: RoleClient, PublicKey: testPub}
			_, err := ParseClientHello(AppendClientHello(nil, ch, testExporter, sign), testExporter)
			return err
		}},
		{"extension overrunning its block", func() error {
			ch := ClientHello{MinVersion: 1, MaxVersion: 1, Role: RoleClient, PublicKey: testPub,
				Extensions: []Extension{{Type: 1, Value: []byte("abc")}}}
			p := AppendClientHello(nil, ch, testExporter, sign)
			// The extension block starts after 2+2+1+8+32 bytes and its
			// length field; claim a longer value than the block holds.
			p[45+2+1+1] = 9
			_, err := ParseClientHello(p, testExporter)
			return err
		}},
		{"drain with trailing byte", func() error {
			_, err := ParseDrain(append(AppendDrain(nil, Drain{WithinMillis: 1, Message: "x"}), 0))
			return err
		}},
		{"ping of 7 bytes", func() error { _, err := ParsePing(make([]byte, 7)); return err }},
		{"access count over the frame limit", func() error {
			_, _, err := ParseAccess([]byte{0, 0xff, 0xff}, nil)
			return err
		}},
		{"access count beyond the payload", func() error {
			_, _, err := ParseAccess([]byte{0, 0, 2, 1}, nil)
			return err
		}},
		{"ping of 9 bytes", func() error { _, err := ParsePing(make([]byte, 9)); return err }},
		{"packet over limit", func() error {
			_, _, err := ParsePacket(make([]byte, AddrLen+MaxPacketLen+1))
			return err
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.parse(); err == nil {
				t.Fatal("parsed without error")
			}
		})
	}
}

func TestPacketFrame(t *testing.T) {
	pkt := []byte("sealed quic packet")
	b := append(AppendPacketHeader(nil, FrameRecvPacket, testAddr, len(pkt)), pkt...)
	typ, n, err := ParseHeader(b)
	if err != nil || typ != FrameRecvPacket || int(n) != len(b)-HeaderLen {
		t.Fatalf("header: %v %d %v", typ, n, err)
	}
	a, p, err := ParsePacket(b[HeaderLen:])
	if err != nil || a != testAddr || !bytes.Equal(p, pkt) {
		t.Fatalf("packet: %v %q %v", a, p, err)
	}
}

// The fuzz seeds in testdata/fuzz are real encodings; regenerate them with
// BURROW_WRITE_SEEDS=1 go test -run TestWriteFuzzSeeds.
func TestWriteFuzzSeeds(t *testing.T) {
	if os.Getenv("BURROW_WRITE_SEEDS") == "" {
		t.Skip("set BURROW_WRITE_SEEDS=1 to rewrite the fuzz seeds")
	}
	dir := filepath.Join("testdata", "fuzz", "FuzzFrame")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, tc := range encodings() {
		frame := append(AppendHeader(nil, tc.t, len(tc.p)), tc.p...)
		body := "go test fuzz v1\n[]byte(" + quoteBytes(frame) + ")\n"
		if err := os.WriteFile(filepath.Join(dir, tc.name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	pkt := append(AppendPacketHeader(nil, FrameSendPacket, testAddr, 4), "quic"...)
	if err := os.WriteFile(filepath.Join(dir, "send-packet"), []byte("go test fuzz v1\n[]byte("+quoteBytes(pkt)+")\n"), 0o644); err != nil {
		t.Fatal(err)
	}
}

func quoteBytes(b []byte) string {
	var s bytes.Buffer
	s.WriteByte('"')
	for _, c := range b {
		s.WriteString(`\x`)
		s.WriteByte("0123456789abcdef"[c>>4])
		s.WriteByte("0123456789abcdef"[c&15])
	}
	s.WriteByte('"')
	return s.String()
}

// FuzzFrame feeds arbitrary bytes, read as one frame, to the parser of its
// type: no input may panic, and what parses must re-encode to itself.
func FuzzFrame(f *testing.F) {
	for _, tc := range encodings() {
		f.Add(append(AppendHeader(nil, tc.t, len(tc.p)), tc.p...))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		typ, n, err := ParseHeader(b)
		if err != nil {
			return
		}
		p := b[HeaderLen:]
		if uint32(len(p)) > n {
			p = p[:n]
		}
		switch typ {
		case FrameClientHello:
			if h, err := ParseClientHello(p, testExporter); err == nil {
				if len(h.PublicKey) != ed25519.PublicKeySize {
					t.Fatal("parsed hello with a short key")
				}
			}
		case FrameServerHello:
			ParseServerHello(p, testExporter)
		case FrameRefuse:
			if f, err := ParseRefuse(p); err == nil && !bytes.Equal(AppendRefuse(nil, f), p) {
				t.Fatal("refuse does not re-encode to itself")
			}
		case FrameSendPacket, FrameRecvPacket:
			if a, pkt, err := ParsePacket(p); err == nil {
				if !bytes.Equal(append(AppendAddr(nil, a), pkt...), p) {
					t.Fatal("packet does not re-encode to itself")
				}
			}
		case FramePeerGone:
			if f, err := ParsePeerGone(p); err == nil && !bytes.Equal(AppendPeerGone(nil, f), p) {
				t.Fatal("peer-gone does not re-encode to itself")
			}
		case FramePing, FramePong:
			ParsePing(p)
		case FrameGoAway:
			if f, err := ParseGoAway(p); err == nil && !bytes.Equal(AppendGoAway(nil, f), p) {
				t.Fatal("go-away does not re-encode to itself")
			}
		case FrameDrain:
			if f, err := ParseDrain(p); err == nil && !bytes.Equal(AppendDrain(nil, f), p) {
				t.Fatal("drain does not re-encode to itself")
			}
		case FrameAccess:
			if flags, e, err := ParseAccess(p, nil); err == nil && !bytes.Equal(AppendAccess(nil, flags, e), p) {
				t.Fatal("access does not re-encode to itself")
			}
		case FramePairIntent:
			if f, err := ParsePairIntent(p); err == nil && !bytes.Equal(AppendPairIntent(nil, f), p) {
				t.Fatal("pair-intent does not re-encode to itself")
			}
		case FrameRedirect:
			if f, err := ParseRedirect(p); err == nil && !bytes.Equal(AppendRedirect(nil, f), p) {
				t.Fatal("redirect does not re-encode to itself")
			}
		case FrameLocate:
			if id, err := ParseLocate(p); err == nil && !bytes.Equal(id[:], p) {
				t.Fatal("locate does not re-encode to itself")
			}
		}
	})
}

func TestBindingCodec(t *testing.T) {
	tok, txid := [16]byte{1, 2, 3}, [8]byte{9, 8, 7}
	req := AppendBindingRequest(nil, tok, txid)
	gotTok, gotTx, err := ParseBindingRequest(req)
	if err != nil || gotTok != tok || gotTx != txid || len(req) != BindingRequestLen {
		t.Fatalf("request: %v %v %v len %d", gotTok, gotTx, err, len(req))
	}
	for _, addr := range []string{"192.0.2.7:4242", "[2001:db8::1]:65535"} {
		a := netip.MustParseAddrPort(addr)
		resp := AppendBindingResponse(nil, txid, a)
		if len(resp) > BindingRequestLen {
			t.Fatalf("a response of %d bytes for a request of %d", len(resp), BindingRequestLen)
		}
		gotTx, gotAddr, err := ParseBindingResponse(resp)
		if err != nil || gotTx != txid || gotAddr != a {
			t.Fatalf("%s: %v %v %v", addr, gotTx, gotAddr, err)
		}
		for n := range len(resp) {
			if _, _, err := ParseBindingResponse(resp[:n]); err == nil {
				t.Fatalf("%s: prefix of %d bytes parsed", addr, n)
			}
		}
	}
	b := UDPBinding{Port: 443, Token: tok}
	if got, err := ParseUDPBinding(AppendUDPBinding(nil, b)); err != nil || got != b {
		t.Fatalf("binding extension: %v %v", got, err)
	}
}

func FuzzBinding(f *testing.F) {
	f.Add(AppendBindingResponse(nil, [8]byte{1}, netip.MustParseAddrPort("192.0.2.1:1")))
	f.Add(AppendBindingRequest(nil, [16]byte{1}, [8]byte{2}))
	f.Fuzz(func(t *testing.T, b []byte) {
		ParseBindingRequest(b)
		if tx, a, err := ParseBindingResponse(b); err == nil {
			// Every address has one encoding (an IPv4-mapped one under
			// family 6 is refused).
			if !bytes.Equal(AppendBindingResponse(nil, tx, a), b) {
				t.Fatalf("response %x does not re-encode", b)
			}
		}
		ParseUDPBinding(b)
	})
}
