package fleet

import (
	"bytes"
	"crypto/x509"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/burrow-tunnel/burrow/identity"
)

func newKey(t testing.TB) *identity.Identity {
	t.Helper()
	k, err := identity.Generate()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func relayID(b byte) identity.ID {
	var id identity.ID
	id[0], id[31] = b, b
	return id
}

// sample is a map of three relays, sorted.
func sample() Map {
	return Map{Version: 7, Relays: []Relay{
		{ID: relayID(1), Addr: "relay-a.example.com:443", Region: "eu"},
		{ID: relayID(2), Addr: "[2001:db8::1]:443", Region: "us-east"},
		{ID: relayID(3), Addr: "10.0.0.3:8443"},
	}}
}

func sign(t testing.TB, m Map, key *identity.Identity) []byte {
	t.Helper()
	b, err := AppendMap(nil, m, key)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestMapRoundTrip(t *testing.T) {
	key := newKey(t)
	tests := []struct {
		name string
		m    Map
	}{
		{"empty", Map{Version: 1}},
		{"three relays", sample()},
		{"version max", Map{Version: ^uint64(0), Relays: sample().Relays[:1]}},
		{"longest fields", Map{Relays: []Relay{{ID: relayID(9), Addr: strings.Repeat("h", MaxAddrLen-4) + ":443", Region: strings.Repeat("r", MaxRegionLen)}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := sign(t, tt.m, key)
			got, err := Verify(b, key.ID())
			if err != nil {
				t.Fatal(err)
			}
			if got.FleetID != key.ID() || got.Version != tt.m.Version || !slices.Equal(got.Relays, tt.m.Relays) && len(tt.m.Relays) != 0 {
				t.Errorf("got %+v, want %+v of fleet %s", got, tt.m, key.ID())
			}
			// Appending to a prefix leaves it alone.
			prefixed, err := AppendMap([]byte("xy"), tt.m, key)
			if err != nil || string(prefixed[:2]) != "xy" {
				t.Fatalf("AppendMap with a prefix: %q, %v", prefixed[:2], err)
			}
			if _, err := ParseMap(prefixed[2:]); err != nil {
				t.Errorf("map appended to a prefix: %v", err)
			}
		})
	}
}

func TestMapRefused(t *testing.T) {
	key, other := newKey(t), newKey(t)
	good := sign(t, sample(), key)
	flip := func(i int) []byte {
		b := bytes.Clone(good)
		b[i] ^= 1
		return b
	}
	tests := []struct {
		name string
		b    []byte
		want error
	}{
		{"another fleet", sign(t, sample(), other), ErrRefused},
		{"version changed", flip(1 + 32 + 7), ErrBadSignature},
		{"relay ID changed", flip(1 + 32 + 10 + 5), ErrBadSignature},
		{"signature changed", flip(len(good) - 1), ErrBadSignature},
		{"key changed", flip(3), ErrBadSignature},
		{"format", append([]byte{2}, good[1:]...), ErrMalformed},
		{"trailing byte", append(bytes.Clone(good), 0), ErrMalformed},
		{"too long", make([]byte, MaxMapLen+1), ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Verify(tt.b, key.ID())
			if !errors.Is(err, tt.want) {
				t.Errorf("Verify: %v, want %v", err, tt.want)
			}
		})
	}
	var ff *ForeignFleetError
	if _, err := Verify(sign(t, sample(), other), key.ID()); !errors.As(err, &ff) || ff.Got != other.ID() || ff.Pinned != key.ID() {
		t.Errorf("a map of another fleet: %v", err)
	}
}

func TestAppendMapChecks(t *testing.T) {
	key := newKey(t)
	s := sample()
	tests := []struct {
		name string
		m    Map
	}{
		{"unsorted", Map{Relays: []Relay{s.Relays[1], s.Relays[0]}}},
		{"ID twice", Map{Relays: []Relay{s.Relays[0], s.Relays[0]}}},
		{"zero ID", Map{Relays: []Relay{{Addr: "a:1"}}}},
		{"no address", Map{Relays: []Relay{{ID: relayID(1)}}}},
		{"no port", Map{Relays: []Relay{{ID: relayID(1), Addr: "relay.example.com"}}}},
		{"address too long", Map{Relays: []Relay{{ID: relayID(1), Addr: strings.Repeat("h", MaxAddrLen) + ":1"}}}},
		{"region too long", Map{Relays: []Relay{{ID: relayID(1), Addr: "a:1", Region: strings.Repeat("r", MaxRegionLen+1)}}}},
		{"too many relays", Map{Relays: make([]Relay, MaxRelays+1)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if b, err := AppendMap(nil, tt.m, key); !errors.Is(err, ErrMalformed) || len(b) != 0 {
				t.Errorf("AppendMap: %d bytes, %v; want ErrMalformed", len(b), err)
			}
		})
	}
}

// TestMapTruncated: every proper prefix of a valid map fails cleanly.
func TestMapTruncated(t *testing.T) {
	key := newKey(t)
	b := sign(t, sample(), key)
	for n := range len(b) {
		if _, err := ParseMap(b[:n]); err == nil {
			t.Fatalf("prefix of %d bytes (of %d) parsed", n, len(b))
		}
	}
}

func TestMapWithWithout(t *testing.T) {
	m := Map{Version: 1}
	for _, b := range []byte{3, 1, 2} {
		m = m.With(Relay{ID: relayID(b), Addr: "a:1"})
	}
	m = m.With(Relay{ID: relayID(2), Addr: "b:2"})
	if len(m.Relays) != 3 || m.Relays[0].ID != relayID(1) || m.Relays[1].Addr != "b:2" {
		t.Fatalf("With: %+v", m.Relays)
	}
	if r, ok := m.Relay(relayID(3)); !ok || r.ID != relayID(3) {
		t.Errorf("Relay(3): %+v %v", r, ok)
	}
	n := m.Without(relayID(1))
	if _, ok := n.Relay(relayID(1)); ok || len(n.Relays) != 2 || len(m.Relays) != 3 {
		t.Errorf("Without: %+v (from %+v)", n.Relays, m.Relays)
	}
}

func TestVersions(t *testing.T) {
	var vs Versions
	f, g := relayID(1), relayID(2)
	for _, v := range []uint64{3, 3, 5} {
		if err := vs.Accept(f, v); err != nil {
			t.Fatalf("Accept(%d): %v", v, err)
		}
	}
	var rb *RollbackError
	if err := vs.Accept(f, 4); !errors.As(err, &rb) || rb.Accepted != 5 || !errors.Is(err, ErrRefused) {
		t.Errorf("Accept(4) after 5: %v", err)
	}
	if err := vs.Accept(g, 1); err != nil {
		t.Errorf("another fleet's version 1: %v", err)
	}
	if vs.Highest(f) != 5 {
		t.Errorf("Highest: %d", vs.Highest(f))
	}
}

// leaf returns the parsed certificate of id carrying signed (none if nil).
func leaf(t *testing.T, id *identity.Identity, signed []byte) *x509.Certificate {
	t.Helper()
	c, err := id.Certificate()
	if signed != nil {
		c, err = id.Certificate(Extension(signed))
	}
	if err != nil {
		t.Fatal(err)
	}
	return c.Leaf
}

func TestVerifyCertificate(t *testing.T) {
	key, other := newKey(t), newKey(t)
	a, b := newKey(t), newKey(t)
	m1 := Map{Version: 1}.With(Relay{ID: a.ID(), Addr: "a:443"}).With(Relay{ID: b.ID(), Addr: "b:443"})
	m2 := m1.Without(b.ID())
	m2.Version = 2
	v1, v2 := sign(t, m1, key), sign(t, m2, key)
	var vs Versions

	if _, err := VerifyCertificate(leaf(t, a, v1), key.ID(), "a:443", &vs); err != nil {
		t.Fatalf("relay a with map 1: %v", err)
	}
	if _, err := VerifyCertificate(leaf(t, b, v1), key.ID(), "b:443", &vs); err != nil {
		t.Fatalf("relay b with map 1: %v", err)
	}
	if _, err := VerifyCertificate(leaf(t, b, nil), key.ID(), "b:443", &vs); !errors.Is(err, identity.ErrKeyMismatch) {
		t.Errorf("relay b without a map: %v, want a key mismatch", err)
	}
	var nf *NotInFleetError
	if _, err := VerifyCertificate(leaf(t, b, v2), key.ID(), "b:443", &vs); !errors.As(err, &nf) || nf.RelayID != b.ID() {
		t.Errorf("relay b with map 2: %v, want not in fleet", err)
	}
	var rb *RollbackError
	if _, err := VerifyCertificate(leaf(t, b, v1), key.ID(), "b:443", &vs); !errors.As(err, &rb) || rb.Accepted != 2 {
		t.Errorf("relay b with map 1 after map 2: %v, want a rollback", err)
	}
	var ff *ForeignFleetError
	if _, err := VerifyCertificate(leaf(t, a, sign(t, m1, other)), key.ID(), "a:443", &vs); !errors.As(err, &ff) || !strings.Contains(err.Error(), "another fleet") {
		t.Errorf("relay a with another fleet's map: %v", err)
	}
	if _, err := VerifyCertificate(leaf(t, a, v2), key.ID(), "a:443", &vs); err != nil {
		t.Errorf("relay a with map 2: %v", err)
	}
}

func TestKeyFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "fleet", "fleet.key")
	k, err := CreateKey(path)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v, %v", fi, err)
	}
	if _, err := CreateKey(path); !errors.Is(err, fs.ErrExist) || !strings.Contains(err.Error(), "exists already") {
		t.Errorf("CreateKey over a key: %v", err)
	}
	l, err := LoadKey(path)
	if err != nil || l.ID() != k.ID() {
		t.Errorf("LoadKey: %v, %v", l, err)
	}
}

func FuzzParseMap(f *testing.F) {
	key := newKey(f)
	f.Add(sign(f, sample(), key))
	f.Add(sign(f, Map{Version: 1}, key))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := ParseMap(b)
		if err != nil {
			return
		}
		// A map that parses encodes again to the same bytes, but for the
		// signature, which only the key can make.
		k := newKey(t)
		again, err := AppendMap(nil, m, k)
		if err != nil {
			t.Fatalf("a parsed map does not encode: %v", err)
		}
		const keyEnd = 1 + 32
		if !bytes.Equal(again[keyEnd:len(again)-64], b[keyEnd:len(b)-64]) {
			t.Fatal("a parsed map encodes to other bytes")
		}
	})
}
