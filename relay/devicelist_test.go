package relay

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestDeviceList(t *testing.T) {
	a, b := newIdentity(t).ID(), newIdentity(t).ID()
	path := filepath.Join(t.TempDir(), "devices")
	os.WriteFile(path, []byte("# cameras\n"+a.String()+"  # front door\n\n"), 0o600)
	l, err := LoadDeviceList(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !l.Allow(a) || l.Allow(b) || l.Len() != 1 {
		t.Fatalf("allow a=%v b=%v len=%d", l.Allow(a), l.Allow(b), l.Len())
	}
	// An edit is picked up without a restart.
	os.WriteFile(path, []byte(a.String()+"\n"+b.String()+"\n"), 0o600)
	future := time.Now().Add(time.Minute)
	os.Chtimes(path, future, future)
	l.mu.Lock()
	l.checked = time.Time{}
	l.mu.Unlock()
	if !l.Allow(b) {
		t.Fatal("added device not allowed after the file changed")
	}
	// A broken edit keeps the last good list.
	os.WriteFile(path, []byte("not-an-id\n"), 0o600)
	later := future.Add(time.Minute)
	os.Chtimes(path, later, later)
	l.mu.Lock()
	l.checked = time.Time{}
	l.mu.Unlock()
	if !l.Allow(a) || !l.Allow(b) {
		t.Fatal("a malformed edit dropped the last good list")
	}
}

func TestParseDeviceListErrors(t *testing.T) {
	id := newIdentity(t).ID().String()
	for _, bad := range []string{
		"# ok\n\nabc\n",
		"# ok\n" + id + " cam\n" + id + " two words\n",
		"# ok\n\n" + id + " -cam\n",
		"# ok\n" + id + "\ncam " + id + "\n",
	} {
		_, err := ParseDeviceList([]byte(bad))
		if err == nil || !strings.Contains(err.Error(), "line 3") {
			t.Errorf("%q: err = %v, want it to name line 3", bad, err)
		}
	}
}

// TestDeviceListNames: a name may follow the ID on its line; Devices
// gives each device's name, "" for those without one.
func TestDeviceListNames(t *testing.T) {
	a, b := newIdentity(t).ID(), newIdentity(t).ID()
	path := filepath.Join(t.TempDir(), "devices")
	os.WriteFile(path, []byte(a.String()+" front-door  # by the gate\n"+b.String()+"\n"), 0o600)
	l, err := LoadDeviceList(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	devs := l.Devices()
	if len(devs) != 2 || devs[a] != "front-door" || devs[b] != "" || !l.Allow(a) || !l.Allow(b) {
		t.Fatalf("devices %v", devs)
	}
}

// FuzzDeviceList: no device list, however malformed, makes parsing panic,
// and every ID it yields is one the text names.
func FuzzDeviceList(f *testing.F) {
	id := newIdentity(f).ID().String()
	f.Add([]byte("# cameras\n" + id + "  # front door\n\n"))
	f.Add([]byte("not-an-id\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		ids, err := ParseDeviceList(b)
		if err != nil {
			return
		}
		for id := range ids {
			if !strings.Contains(strings.ToLower(string(b)), id.String()) {
				t.Fatalf("ID %v from % q", id, b)
			}
		}
	})
}
