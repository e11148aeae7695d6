package paths

import (
	"crypto/tls"
	"net/http"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/relay"
	"github.com/burrow-tunnel/burrow/relaylink"
	"github.com/burrow-tunnel/burrow/relayproto"
)

// enrollingRelay is a relay that admits the devices it enrolled, and
// enrolls any device presenting a token (as a token with uses left does).
type enrollingRelay struct {
	srv *relay.Server

	mu       sync.Mutex
	enrolled map[identity.ID]bool
	tokens   []string // presented, in order
}

func startEnrollingRelay(t *testing.T, m *memNet) *enrollingRelay {
	t.Helper()
	id, err := identity.Generate()
	if err != nil {
		t.Fatal(err)
	}
	r := &enrollingRelay{enrolled: make(map[identity.ID]bool)}
	r.srv, err = relay.New(relay.Config{
		Identity: id,
		AllowDevice: func(id identity.ID) bool {
			r.mu.Lock()
			defer r.mu.Unlock()
			return r.enrolled[id]
		},
		Enroll: func(id identity.ID, token string) error {
			r.mu.Lock()
			defer r.mu.Unlock()
			r.tokens = append(r.tokens, token)
			r.enrolled[id] = true
			return nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: r.srv}
	go hs.Serve(tls.NewListener(m, r.srv.TLSConfig()))
	t.Cleanup(func() {
		hs.Close()
		r.srv.Close()
	})
	return r
}

// remove un-enrolls id and disconnects it, as "burrow relay devices
// remove" does.
func (r *enrollingRelay) remove(id identity.ID) {
	r.mu.Lock()
	delete(r.enrolled, id)
	r.mu.Unlock()
	r.srv.Disconnect(id)
}

func (r *enrollingRelay) presented() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.tokens...)
}

// TestEnrollTokenSentUntilAdmitted: a device presents its enrollment
// token until the relay first admits it, and never after: removed from
// the relay, it is not enrolled again by the token it still holds.
func TestEnrollTokenSentUntilAdmitted(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := newMemNet()
		r := startEnrollingRelay(t, m)
		id, _ := identity.Generate()
		var enrolled int
		c, err := Listen(Config{Identity: id, Role: relayproto.RoleDevice, EnrollToken: "enroll-abc",
			OnEnrolled: func() { enrolled++ },
			Relay:      relaylink.RelayConfig{Addr: "relay:443", ID: r.srv.ID()}, Dial: m.Dial, Direct: DirectOptions{Disable: true, NoRelayUDP: true}})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if err := c.WaitAttached(t.Context()); err != nil {
			t.Fatal(err)
		}
		if got := r.presented(); len(got) != 1 || got[0] != "enroll-abc" {
			t.Fatalf("tokens presented: %q, want the device's once", got)
		}

		r.remove(id.ID())
		waitStatus(c, func(s Status) bool { return !s.Attached })
		time.Sleep(time.Minute) // many attempts
		synctest.Wait()
		if st := c.Status(); st.Attached || st.LastError == nil || !strings.Contains(st.LastError.Error(), "is not enrolled on this relay: give it an enrollment token") {
			t.Fatalf("after its removal: attached %v, last error %v; want a refusal of a device that presents no token", st.Attached, st.LastError)
		}
		if got := r.presented(); len(got) != 1 {
			t.Fatalf("tokens presented: %q; the token was presented again after the relay admitted the device", got)
		}
		// Enrolled again by its operator, it is back, with no token.
		r.mu.Lock()
		r.enrolled[id.ID()] = true
		r.mu.Unlock()
		waitStatus(c, func(s Status) bool { return s.Attached })
		c.Close()
		if enrolled != 1 || len(r.presented()) != 1 {
			t.Fatalf("OnEnrolled called %d times, %d tokens presented; want 1 and 1", enrolled, len(r.presented()))
		}
	})
}

// TestNoTokenNoOnEnrolled: OnEnrolled is for devices that hold a token.
func TestNoTokenNoOnEnrolled(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := newMemNet()
		srv := startRelay(t, m, 15*time.Second)
		id, _ := identity.Generate()
		called := false
		c, err := Listen(Config{Identity: id, Role: relayproto.RoleDevice, OnEnrolled: func() { called = true },
			Relay: relaylink.RelayConfig{Addr: "relay:443", ID: srv.ID()}, Dial: m.Dial, Direct: DirectOptions{Disable: true, NoRelayUDP: true}})
		if err != nil {
			t.Fatal(err)
		}
		if err := c.WaitAttached(t.Context()); err != nil {
			t.Fatal(err)
		}
		c.Close()
		if called {
			t.Fatal("OnEnrolled called for a device without a token")
		}
	})
}
