package pairing

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/burrow-tunnel/burrow/identity"
)

func testInvite(t testing.TB) Invite {
	dev, _ := identity.Generate()
	rel, _ := identity.Generate()
	return Invite{Device: dev.ID(), Relay: "relay.example.com:443", RelayID: rel.ID(), Secret: NewSecret(),
		Expires: time.Unix(1900000000, 0), Name: "front-door"}
}

func TestRoundTrip(t *testing.T) {
	in := testInvite(t)
	for _, variant := range []Invite{in, {Device: in.Device, Relay: in.Relay, Secret: in.Secret, Expires: in.Expires}} {
		s := variant.String()
		got, err := Parse(s)
		if err != nil {
			t.Fatalf("%s: %v", s, err)
		}
		if got != variant {
			t.Fatalf("got %+v, want %+v", got, variant)
		}
		if len(s) > 300 {
			t.Fatalf("invite of %d characters: too long for a small QR code", len(s))
		}
	}
}

func TestParseRejects(t *testing.T) {
	good := testInvite(t).String()
	tests := map[string]string{
		"empty":            "",
		"http":             strings.Replace(good, "burrow://", "https://", 1),
		"other host":       strings.Replace(good, "burrow://pair", "burrow://join", 1),
		"unknown field":    good + "&role=admin",
		"repeated field":   good + "&name=x",
		"short secret":     strings.Replace(good, "secret=", "secret=a", 1),
		"bad device":       strings.Replace(good, "device=", "device=x", 1),
		"relay no port":    strings.Replace(good, "relay=relay.example.com%3A443", "relay=relay.example.com", 1),
		"expires not unix": strings.Replace(good, "expires=1900000000", "expires=tomorrow", 1),
		"relay not ascii":  strings.Replace(good, "relay=relay.example.com%3A443", "relay=r%E0lay.example.com%3A443", 1),
		"relay with space": strings.Replace(good, "relay=relay.example.com%3A443", "relay=relay+example.com%3A443", 1),
		"relay too long":   strings.Replace(good, "relay=relay.example.com%3A443", "relay="+strings.Repeat("r", 252)+".com%3A443", 1),
		"too long":         good + "&" + strings.Repeat("x", MaxLen),
	}
	for name, s := range tests {
		if _, err := Parse(s); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: err = %v, want ErrInvalid", name, err)
		}
	}
}

func TestHashesDiffer(t *testing.T) {
	s := NewSecret()
	if s.Verifier() == s.RelayToken() {
		t.Fatal("the relay token equals the device's verifier")
	}
	if !s.Matches(s.Verifier()) || NewSecret().Matches(s.Verifier()) {
		t.Fatal("Matches is wrong")
	}
	if strings.Contains(testInvite(t).String(), "verifier") {
		t.Fatal("invite leaks a hash")
	}
}

func FuzzParse(f *testing.F) {
	f.Add(testInvite(f).String())
	f.Add("burrow://pair?device=&relay=:1&secret=&expires=1")
	f.Fuzz(func(t *testing.T, s string) {
		in, err := Parse(s)
		if err != nil {
			return
		}
		again, err := Parse(in.String())
		if err != nil || again != in {
			t.Fatalf("%q parsed to %+v, which does not round-trip: %v", s, in, err)
		}
	})
}
