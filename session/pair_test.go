package session

import (
	"errors"
	"testing"
)

func TestPairInfoRoundTrip(t *testing.T) {
	tests := []PairInfo{
		{},
		{User: "bob"},
		{User: "bob-2", Asked: "bob"},
		{User: "carol", WasRole: "viewer", WasName: "alice"},
		{User: "bob-2", Asked: "bob", WasRole: "admin", WasName: "bob-2"},
	}
	for _, want := range tests {
		b := AppendPairInfo(nil, want)
		got, err := ParsePairInfo(b)
		if err != nil || got != want {
			t.Fatalf("got %+v, %v; want %+v", got, err, want)
		}
		// Every proper prefix but the empty one (an older device's
		// stream, which ends after the reply) is truncated.
		for n := 1; n < len(b); n++ {
			if _, err := ParsePairInfo(b[:n]); !errors.Is(err, ErrHeaderShort) {
				t.Fatalf("%+v: prefix of %d bytes: err = %v, want ErrHeaderShort", want, n, err)
			}
		}
	}
	if p, err := ParsePairInfo(nil); err != nil || p != (PairInfo{}) {
		t.Fatalf("no pair info (an older device): %+v, %v", p, err)
	}
}

func TestPairInfoChecks(t *testing.T) {
	tests := []struct {
		name string
		b    []byte
		ok   bool
	}{
		{"unknown entry skipped", []byte{0, 8, 9, 0, 1, 'x', 1, 0, 1, 'b'}, true},
		{"entry given twice", []byte{0, 8, 1, 0, 1, 'a', 1, 0, 1, 'b'}, false},
		{"value not a name", []byte{0, 5, 1, 0, 2, 0x1b, '['}, false},
		{"empty value", []byte{0, 3, 1, 0, 0}, false},
		{"entry past the block", []byte{0, 4, 1, 0, 5, 'a'}, false},
		{"block too long", []byte{0xff, 0xff}, false},
	}
	for _, tc := range tests {
		p, err := ParsePairInfo(tc.b)
		if (err == nil) != tc.ok {
			t.Errorf("%s: %+v, %v", tc.name, p, err)
		}
	}
	// Values that are not names are not sent.
	if p, err := ParsePairInfo(AppendPairInfo(nil, PairInfo{User: "ok", Asked: "\x1b[2J"})); err != nil || p != (PairInfo{User: "ok"}) {
		t.Fatalf("got %+v, %v", p, err)
	}
}

func FuzzPairInfo(f *testing.F) {
	f.Add(AppendPairInfo(nil, PairInfo{User: "bob-2", Asked: "bob", WasRole: "viewer", WasName: "bob"}))
	f.Add([]byte{0, 8, 9, 0, 1, 'x', 1, 0, 1, 'b'})
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := ParsePairInfo(b)
		if err != nil {
			return
		}
		again, err := ParsePairInfo(AppendPairInfo(nil, p))
		if err != nil || again != p {
			t.Fatalf("pair info %+v does not round-trip: %+v, %v", p, again, err)
		}
		if len(b) > 2+maxExtLen {
			t.Fatalf("parsed %d bytes", len(b))
		}
	})
}

// TestPairInfoOlderPeers: a client that does not know the pair info (it
// reads the reply alone) gets the reply it always got, and leaves the
// pair info unread; a client reading it from a device that sends none
// (the stream ends after the reply) gets a zero PairInfo.
func TestPairInfoOlderPeers(t *testing.T) {
	rep := Reply{Code: CodeOK, Detail: "viewer", Allowed: []string{"rtsp"}}
	info := PairInfo{User: "bob-2", Asked: "bob"}
	stream := &sliceReader{b: AppendPairInfo(AppendReply(nil, rep), info)}
	got, err := ReadReply(stream)
	if err != nil || got.Detail != "viewer" || len(got.Allowed) != 1 {
		t.Fatalf("reply read alone: %+v, %v", got, err)
	}
	if p, err := ParsePairInfo(stream.b); err != nil || p != info {
		t.Fatalf("what the reply left unread: %+v, %v", p, err)
	}
	old := &sliceReader{b: AppendReply(nil, rep)}
	if _, err := ReadReply(old); err != nil {
		t.Fatal(err)
	}
	if p, err := ReadPairInfo(old); err != nil || p != (PairInfo{}) {
		t.Fatalf("from a device that sends none: %+v, %v", p, err)
	}
}
