package session

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestRequestRoundTrip(t *testing.T) {
	for _, svc := range []string{"http", "rtsp", "a", "ssh-2", "cam_1.main", strings.Repeat("x", MaxServiceLen)} {
		b := AppendRequest(nil, Request{Kind: KindTunnel, Service: svc})
		got, err := ParseRequest(b)
		if err != nil || got.Service != svc {
			t.Fatalf("%q: got %+v, %v", svc, got, err)
		}
		for n := range len(b) {
			if _, err := ParseRequest(b[:n]); err == nil {
				t.Fatalf("%q: prefix of %d bytes parsed", svc, n)
			}
		}
	}
}

func TestRequestRejects(t *testing.T) {
	valid := AppendRequest(nil, Request{Kind: KindTunnel, Service: "http"})
	tests := []struct {
		name string
		b    []byte
	}{
		{"version 2", append([]byte{2}, valid[1:]...)},
		{"kind 9", append([]byte{1, 9}, valid[2:]...)},
		{"name too long", append([]byte{1, 1, 64}, bytes.Repeat([]byte{'a'}, 66)...)},
		{"empty name", []byte{1, 1, 0, 0, 0}},
		{"host:port as name", AppendRequest(nil, Request{Kind: KindTunnel, Service: "127.0.0.1:22"})},
		{"uppercase", AppendRequest(nil, Request{Kind: KindTunnel, Service: "HTTP"})},
		{"leading dash", AppendRequest(nil, Request{Kind: KindTunnel, Service: "-x"})},
		{"extensions over limit", []byte{1, 1, 1, 'a', 0xff, 0xff}},
		{"trailing bytes", append(bytes.Clone(valid), 0)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := ParseRequest(tc.b); err == nil {
				t.Fatal("parsed without error")
			}
		})
	}
	// A pairing request carries a secret.
	pair := AppendRequest(nil, Request{Kind: KindPair, Secret: []byte("0123456789abcdef")})
	if r, err := ParseRequest(pair); err != nil || r.Kind != KindPair || string(r.Secret) != "0123456789abcdef" {
		t.Fatalf("pair request: %+v, %v", r, err)
	}
	for n := range len(pair) {
		if _, err := ParseRequest(pair[:n]); err == nil {
			t.Fatalf("pair request prefix of %d bytes parsed", n)
		}
	}
	if _, err := ParseRequest(append([]byte{1, 2, 65}, make([]byte, 67)...)); err == nil {
		t.Fatal("secret of 65 bytes parsed")
	}
	// It names its invite by the invite's relay token.
	var token [32]byte
	for i := range token {
		token[i] = byte(i + 1)
	}
	named := AppendRequest(nil, Request{Kind: KindPair, Secret: []byte("0123456789abcdef"), Invite: token})
	if r, err := ParseRequest(named); err != nil || r.Invite != token || string(r.Secret) != "0123456789abcdef" {
		t.Fatalf("pair request naming its invite: %+v, %v", r, err)
	}
	for n := range len(named) {
		if _, err := ParseRequest(named[:n]); err == nil {
			t.Fatalf("pair request naming its invite: prefix of %d bytes parsed", n)
		}
	}
	secret := append([]byte{1, 2, 16}, "0123456789abcdef"...)
	withExts := func(exts ...byte) []byte {
		return append(append(bytes.Clone(secret), byte(len(exts)>>8), byte(len(exts))), exts...)
	}
	invite := append([]byte{extInvite, 0, 32}, token[:]...)
	if r, err := ParseRequest(withExts(append([]byte{9, 0, 2, 'x', 'y'}, invite...)...)); err != nil || r.Invite != token {
		t.Fatalf("invite after an unknown extension: %+v, %v", r, err)
	}
	for name, b := range map[string][]byte{
		"invite of 31 bytes":              withExts(append([]byte{extInvite, 0, 31}, token[:31]...)...),
		"invite given twice":              withExts(append(bytes.Clone(invite), invite...)...),
		"extension header cut":            withExts(9, 0),
		"extension longer than its block": withExts(9, 0, 5, 'x'),
	} {
		if _, err := ParseRequest(b); !errors.Is(err, ErrBadHeader) {
			t.Errorf("%s: err = %v, want ErrBadHeader", name, err)
		}
	}
	// On a tunnel request the invite extension means nothing: skipped.
	tun := append([]byte{1, 1, 4, 'h', 't', 't', 'p', 0, byte(len(invite))}, invite...)
	if r, err := ParseRequest(tun); err != nil || r.Service != "http" || r.Invite != ([32]byte{}) {
		t.Fatalf("tunnel request with an invite extension: %+v, %v", r, err)
	}
	// A control request carries nothing.
	ctl := AppendRequest(nil, Request{Kind: KindControl})
	if r, err := ParseRequest(ctl); err != nil || r.Kind != KindControl || r.Service != "" {
		t.Fatalf("control request: %+v, %v", r, err)
	}
	if _, err := ParseRequest([]byte{1, 3, 1, 'x', 0, 0}); err == nil {
		t.Fatal("control request with a field parsed")
	}
	// Unknown extensions are skipped.
	withExt := append([]byte{1, 1, 4, 'h', 't', 't', 'p', 0, 3}, 7, 0, 0)
	if r, err := ParseRequest(withExt); err != nil || r.Service != "http" {
		t.Fatalf("request with an extension: %+v, %v", r, err)
	}
}

func TestReplyRoundTrip(t *testing.T) {
	tests := []Reply{
		{Code: CodeOK},
		{Code: CodeNotAuthorized, Detail: "service not granted"},
		{Code: CodeUnknownService, Allowed: []string{"http", "rtsp"}},
		{Code: CodeServiceUnreachable, Detail: "dial tcp 127.0.0.1:554: connect: connection refused"},
		{Code: CodeUnavailable, Detail: "the device could not store the pairing: its storage is full"},
	}
	for _, want := range tests {
		b := AppendReply(nil, want)
		got, err := ParseReply(b)
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Fatalf("got %+v, %v; want %+v", got, err, want)
		}
		for n := range len(b) {
			if _, err := ParseReply(b[:n]); !errors.Is(err, ErrHeaderShort) {
				t.Fatalf("%+v: prefix of %d bytes: err = %v, want ErrHeaderShort", want, n, err)
			}
		}
	}
}

func TestReplyTruncatesLongFields(t *testing.T) {
	r := Reply{Code: CodeServiceUnreachable, Detail: strings.Repeat("e", 5000)}
	got, err := ParseReply(AppendReply(nil, r))
	if err != nil || len(got.Detail) != MaxDetailLen {
		t.Fatalf("got detail of %d bytes, %v", len(got.Detail), err)
	}
}

func TestWriteHeaderFuzzSeeds(t *testing.T) {
	if os.Getenv("BURROW_WRITE_SEEDS") == "" {
		t.Skip("set BURROW_WRITE_SEEDS=1 to rewrite the fuzz seeds")
	}
	write := func(fuzz, name string, b []byte) {
		dir := filepath.Join("testdata", "fuzz", fuzz)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		var s strings.Builder
		for _, c := range b {
			s.WriteString(`\x`)
			s.WriteByte("0123456789abcdef"[c>>4])
			s.WriteByte("0123456789abcdef"[c&15])
		}
		if err := os.WriteFile(filepath.Join(dir, name), []byte("go test fuzz v1\n[]byte(\""+s.String()+"\")\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("FuzzRequest", "http", AppendRequest(nil, Request{Kind: KindTunnel, Service: "http"}))
	write("FuzzRequest", "pair", AppendRequest(nil, Request{Kind: KindPair, Secret: []byte("0123456789abcdef"), Invite: [32]byte{1, 2, 3}}))
	write("FuzzReply", "ok", AppendReply(nil, Reply{Code: CodeOK}))
	write("FuzzReply", "unknown", AppendReply(nil, Reply{Code: CodeUnknownService, Allowed: []string{"http", "rtsp"}}))
	write("FuzzReply", "unreachable", AppendReply(nil, Reply{Code: CodeServiceUnreachable, Detail: "connection refused"}))
}

func FuzzRequest(f *testing.F) {
	f.Add(AppendRequest(nil, Request{Kind: KindTunnel, Service: "http"}))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := ParseRequest(b)
		if err != nil {
			return
		}
		if r.Kind == KindTunnel {
			if err := ValidService(r.Service); err != nil {
				t.Fatalf("parsed an invalid service name: %v", err)
			}
		}
		if again, err := ParseRequest(AppendRequest(nil, r)); err != nil || again.Kind != r.Kind || again.Service != r.Service || string(again.Secret) != string(r.Secret) || again.Invite != r.Invite {
			t.Fatalf("request %+v does not round-trip: %v", r, err)
		}
	})
}

func FuzzReply(f *testing.F) {
	f.Add(AppendReply(nil, Reply{Code: CodeUnknownService, Allowed: []string{"http"}}))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := ParseReply(b)
		if err != nil {
			return
		}
		if !bytes.Equal(AppendReply(nil, r), b) {
			t.Fatal("reply does not re-encode to itself")
		}
	})
}
