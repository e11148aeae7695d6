package fleetstate

import (
	"crypto/rand"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/internal/testing/natstest"
	"github.com/burrow-tunnel/burrow/relay"
)

// TestTokenAcrossRelays: a token created through relay A's admin API
// enrolls a device at relay C; relay B then admits the device without a
// token, and A lists it.
func TestTokenAcrossRelays(t *testing.T) {
	ns := natstest.Start(t)
	a, b, c := startRelay(t, ns.URL()), startRelay(t, ns.URL()), startRelay(t, ns.URL())
	token := a.createToken(1)
	dev := newIdentity(t)
	l, err := c.dial(dev, token)
	if err != nil {
		t.Fatalf("enrollment at C with A's token: %v", err)
	}
	l.Close()
	eventually(t, "B learns of the enrollment", func() bool { return b.state.Enrolled(dev.ID()) })
	l, err = b.dial(dev, "")
	if err != nil {
		t.Fatalf("enrolled device at B, without a token: %v", err)
	}
	l.Close()
	// The token had one use, wherever it is presented.
	if _, err := a.dial(newIdentity(t), token); !strings.Contains(refusal(t, err).Message, "used up") {
		t.Fatalf("second use at A: %v", err)
	}
	eventually(t, "A lists the device", func() bool {
		code, body := a.call("GET", "/devices", nil)
		var devs []relay.EnrolledDevice
		json.Unmarshal(body, &devs)
		return code == http.StatusOK && len(devs) == 1 && devs[0].ID == dev.ID()
	})
}

// randomID returns an ID of no key: the state does not care.
func randomID() identity.ID {
	var id identity.ID
	rand.Read(id[:])
	return id
}

// TestSpendOnce: 1,000 devices present one token at once, spread over
// three relays' states: exactly as many enroll as the token has uses.
func TestSpendOnce(t *testing.T) {
	ns := natstest.Start(t)
	var states [3]*State
	for i := range states {
		states[i] = openState(t, ns.URL(), time.Minute)
	}
	for _, uses := range []int{1, 3} {
		token, err := states[0].CreateToken(uses, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		var ok, unknown atomic.Int64
		var other sync.Map
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i := range 1000 {
			wg.Go(func() {
				<-start
				err := states[i%3].Enroll(randomID(), token)
				switch {
				case err == nil:
					ok.Add(1)
				case errors.Is(err, relay.ErrTokenUnknown):
					unknown.Add(1)
				default:
					other.Store(err.Error(), true)
				}
			})
		}
		close(start)
		wg.Wait()
		other.Range(func(k, _ any) bool { t.Errorf("%d uses: unexpected error: %s", uses, k); return true })
		if ok.Load() != int64(uses) || unknown.Load() != int64(1000-uses) {
			t.Errorf("%d uses: %d enrolled, %d refused as used up; want %d and %d", uses, ok.Load(), unknown.Load(), uses, 1000-uses)
		}
	}
}

// TestRemovedDeviceStaysRemoved: the meaning of relay.Store, in the
// fleet: a removed device's old token (uses left) does not enroll it
// again, though it serves other devices; a token issued after the removal
// does; a device not enrolled cannot be removed.
func TestRemovedDeviceStaysRemoved(t *testing.T) {
	ns := natstest.Start(t)
	a, b := openState(t, ns.URL(), 0), openState(t, ns.URL(), 0)
	token, err := a.CreateToken(3, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	dev := randomID()
	if err := b.Enroll(dev, token); err != nil {
		t.Fatal(err)
	}
	if err := a.Remove(dev); err != nil {
		t.Fatalf("remove through another relay than the one that enrolled: %v", err)
	}
	eventually(t, "B sees the removal", func() bool { return !b.Enrolled(dev) })
	if err := b.Enroll(dev, token); !errors.Is(err, relay.ErrTokenBeforeRemoval) {
		t.Fatalf("removed device with its old token: %v", err)
	}
	if err := a.Remove(dev); !errors.Is(err, relay.ErrNotEnrolled) {
		t.Fatalf("second removal: %v", err)
	}
	if err := b.Enroll(randomID(), token); err != nil {
		t.Fatalf("another device with the token: %v", err)
	}
	time.Sleep(time.Millisecond)
	fresh, err := b.CreateToken(1, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Enroll(dev, fresh); err != nil {
		t.Fatalf("removed device with a new token: %v", err)
	}
	devs, _ := a.Devices()
	if len(devs) != 2 || devs[1].ID != dev {
		t.Fatalf("devices %v", devs)
	}
}

// TestTokens: a token's lifetime and uses are checked, an expired token
// is refused, an unknown one too.
func TestTokens(t *testing.T) {
	ns := natstest.Start(t)
	st := openState(t, ns.URL(), 0)
	for _, ttl := range []time.Duration{0, -time.Hour} {
		if tok, err := st.CreateToken(1, ttl); err == nil || !strings.Contains(err.Error(), "more than 0") {
			t.Errorf("ttl %v: token %q, error %v", ttl, tok, err)
		}
	}
	if _, err := st.CreateToken(0, time.Hour); err == nil {
		t.Error("a token of 0 uses")
	}
	expired, err := st.CreateToken(5, time.Nanosecond)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Millisecond)
	if err := st.Enroll(randomID(), expired); !errors.Is(err, relay.ErrTokenExpired) {
		t.Fatalf("expired token: %v", err)
	}
	if err := st.Enroll(randomID(), "enroll-nosuchtoken"); !errors.Is(err, relay.ErrTokenUnknown) {
		t.Fatalf("unknown token: %v", err)
	}
}

// TestBucketsReadFromLeader: the buckets have direct reads off, so that
// the reads a compare-and-swap depends on go to the stream leader, and
// say their format.
func TestBucketsReadFromLeader(t *testing.T) {
	ns := natstest.Start(t)
	st := openState(t, ns.URL(), 0)
	js, err := jetstream.New(st.nc)
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range []string{DevicesBucket, TokensBucket} {
		s, err := js.Stream(t.Context(), "KV_"+b)
		if err != nil {
			t.Fatal(err)
		}
		cfg := s.CachedInfo().Config
		if cfg.AllowDirect || cfg.Metadata["burrow_format"] != "1" {
			t.Errorf("%s: AllowDirect %v, metadata %v", b, cfg.AllowDirect, cfg.Metadata)
		}
	}
	// A second relay opens the same buckets and leaves them so.
	openState(t, ns.URL(), 0)
	s, _ := js.Stream(t.Context(), "KV_"+DevicesBucket)
	if s.CachedInfo().Config.AllowDirect {
		t.Error("a second relay turned direct reads on")
	}
}

// TestUnknownFormatEnrollsNoOne: a device record of a format version the
// relay does not know counts as not enrolled.
func TestUnknownFormatEnrollsNoOne(t *testing.T) {
	ns := natstest.Start(t)
	st := openState(t, ns.URL(), 0)
	dev := randomID()
	if err := st.Add(dev); err != nil {
		t.Fatal(err)
	}
	if _, err := st.devices.Put(t.Context(), dev.String(), []byte(`{"v":2,"enrolled":"2030-01-01T00:00:00Z"}`)); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the device no longer counts as enrolled", func() bool { return !st.Enrolled(dev) })
}
