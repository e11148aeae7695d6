package lan

import (
	"crypto/sha256"
	"testing"
	"time"

	"github.com/burrow-tunnel/burrow/identity"
)

func testID(s string) identity.ID { return identity.ID(sha256.Sum256([]byte(s))) }

// TestTagsDoNotRepeat: a device's tags over 10,000 windows, and another
// device's over the same windows, are all different.
func TestTagsDoNotRepeat(t *testing.T) {
	a, b := testID("a"), testID("b")
	seen := make(map[Tag]string)
	for w := int64(0); w < 10000; w++ {
		for _, d := range []struct {
			name string
			id   identity.ID
		}{{"a", a}, {"b", b}} {
			tag := TagOf(d.id, w)
			if prev, ok := seen[tag]; ok {
				t.Fatalf("tag of %s in window %d repeats that of %s", d.name, w, prev)
			}
			seen[tag] = d.name
		}
	}
}

// TestTagDeterministic: the tag is a function of the ID and the window
// only, as the device and the client must agree; this also pins the
// construction.
func TestTagDeterministic(t *testing.T) {
	id := testID("a")
	if TagOf(id, 42) != TagOf(id, 42) {
		t.Fatal("two tags of one device and window differ")
	}
	if TagOf(id, 42) == TagOf(testID("b"), 42) {
		t.Fatal("two devices have the same tag")
	}
	if TagOf(id, 42) == TagOf(id, 43) {
		t.Fatal("two windows have the same tag")
	}
	s := TagOf(id, 1).String()
	if len(s) != 32 {
		t.Fatalf("tag string %q: want 32 hex digits", s)
	}
	got, ok := ParseTag(s)
	if !ok || got != TagOf(id, 1) {
		t.Fatalf("ParseTag(%q) = %v, %v", s, got, ok)
	}
	for _, bad := range []string{"", s[:31], s + "0", "zz" + s[2:]} {
		if _, ok := ParseTag(bad); ok {
			t.Errorf("ParseTag(%q) accepted", bad)
		}
	}
}

func TestWindow(t *testing.T) {
	tests := []struct {
		t    time.Time
		want int64
	}{
		{time.Unix(0, 0), 0},
		{time.Unix(599, 999999999), 0},
		{time.Unix(600, 0), 1},
		{time.Unix(1199, 0), 1},
		{time.Unix(1200, 0), 2},
		{time.Unix(-1, 0), -1},
		{time.Unix(-600, 0), -1},
		{time.Unix(-601, 0), -2},
	}
	for _, tt := range tests {
		if got := Window(tt.t); got != tt.want {
			t.Errorf("Window(%v) = %d, want %d", tt.t.Unix(), got, tt.want)
		}
	}
	if WindowLength != 600*time.Second {
		t.Fatalf("the table assumes 10-minute windows")
	}
}

// TestCandidates: a client matches the device's tags of the windows
// beside its own and no other, and never another device's.
func TestCandidates(t *testing.T) {
	a, b := testID("a"), testID("b")
	const w = 1000
	c := Candidates(a, w)
	for dw := int64(-3); dw <= 3; dw++ {
		tag := TagOf(a, w+dw)
		in := tag == c[0] || tag == c[1] || tag == c[2]
		if want := dw >= -1 && dw <= 1; in != want {
			t.Errorf("window %+d: matched %v, want %v", dw, in, want)
		}
		tb := TagOf(b, w+dw)
		if tb == c[0] || tb == c[1] || tb == c[2] {
			t.Errorf("window %+d: another device's tag matched", dw)
		}
	}
}
