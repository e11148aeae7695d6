package relay

import (
	"errors"
	"net"
	"testing"
	"time"

	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/relayproto"
)

// waitStats waits until ok(Stats) holds, and fails the test if it does not
// within a few seconds (the handshake counts its failure just after it sent
// the refusal the test read).
func waitStats(t *testing.T, srv *Server, what string, ok func(Stats) bool) Stats {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		st := srv.Stats()
		if ok(st) {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: stats %+v", what, st)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestEventCounters: refusals by role and code, handshake failures by
// reason, enrollments, attaches and reattaches are counted, and the
// recent refusals list them newest first.
func TestEventCounters(t *testing.T) {
	listed := newIdentity(t)
	srv, addr := serve(t, Config{
		AllowDevice: func(id identity.ID) bool { return id == listed.ID() },
		Enroll: func(id identity.ID, token string) error {
			if token == "good" {
				return nil
			}
			return errTestToken
		},
	})
	stranger := newIdentity(t)

	a := connect(t, addr) // a device nobody enrolled
	a.hello(stranger, relayproto.RoleDevice, 1, 1, a.exporter())
	a.refusal()
	a = connect(t, addr) // no common version
	a.hello(listed, relayproto.RoleClient, 7, 9, a.exporter())
	a.refusal()
	a = connect(t, addr) // something else than a hello
	a.write(relayproto.FramePing, make([]byte, 8))
	a.refusal()
	enroll(t, addr, newIdentity(t), "bad").refusal()
	enroll(t, addr, newIdentity(t), "good")

	// A TLS handshake that fails: plain text on the TLS port.
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte("GET / HTTP/1.1\r\n\r\n"))
	c.Close()

	attach(t, addr, listed, relayproto.RoleDevice)
	attach(t, addr, listed, relayproto.RoleDevice) // replaces its own attachment
	attach(t, addr, stranger, relayproto.RoleClient)

	st := waitStats(t, srv, "handshake failures", func(st Stats) bool {
		f := st.HandshakeFailures
		return f[HandshakeVersion] == 1 && f[HandshakeBadHello] == 1 && f[HandshakeTLS] >= 1
	})
	wantRef := map[RefusalKey]uint64{
		{relayproto.RoleDevice, relayproto.RefuseNotAllowed}: 2,
		{relayproto.RoleClient, relayproto.RefuseVersion}:    1,
		{0, relayproto.RefuseAuth}:                           1,
	}
	for k, n := range st.Refusals {
		if n != wantRef[k] {
			t.Errorf("refusals of %v %v: %d, want %d", k.Role, k.Code, n, wantRef[k])
		}
	}
	if len(st.Refusals) != numRoles*len(RefuseCodes) {
		t.Errorf("%d refusal keys, want every role and code", len(st.Refusals))
	}
	if st.HandshakeFailures[HandshakeBadAuth] != 0 || st.HandshakeFailures[HandshakeTimeout] != 0 {
		t.Errorf("handshake failures %v", st.HandshakeFailures)
	}
	if st.Enrolled != 1 || st.EnrollFailed != 1 {
		t.Errorf("enrolled %d, failed %d; want 1, 1", st.Enrolled, st.EnrollFailed)
	}
	if st.DeviceAttaches != 3 || st.ClientAttaches != 1 || st.DeviceReattaches != 1 || st.ClientReattaches != 0 {
		t.Errorf("attaches %d/%d, reattaches %d/%d; want 3/1, 1/0",
			st.DeviceAttaches, st.ClientAttaches, st.DeviceReattaches, st.ClientReattaches)
	}

	rec := srv.RecentRefusals()
	if len(rec) != 4 {
		t.Fatalf("%d recent refusals, want 4: %+v", len(rec), rec)
	}
	if r := rec[0]; r.Code != relayproto.RefuseNotAllowed || r.Role != relayproto.RoleDevice || r.Agent.IsZero() || r.Reason == "" || r.Remote == "" {
		t.Errorf("newest refusal %+v, want the bad token's", r)
	}
	if r := rec[1]; r.Code != relayproto.RefuseAuth || r.Role != 0 || !r.Agent.IsZero() {
		t.Errorf("second refusal %+v, want the ping's, with no role or agent", r)
	}
	if r := rec[3]; r.Agent != stranger.ID() || r.Time.After(rec[0].Time) {
		t.Errorf("oldest refusal %+v, want the stranger's", r)
	}
}

// TestDeviceBackSoonIsReattach: a device that attaches again just after it
// left counts as reattaching.
func TestDeviceBackSoonIsReattach(t *testing.T) {
	srv, addr := serve(t, Config{AllowDevice: allowAll})
	id := newIdentity(t)
	a := attach(t, addr, id, relayproto.RoleDevice)
	a.conn.Close()
	waitStats(t, srv, "device left", func(st Stats) bool { return st.Devices == 0 })
	attach(t, addr, id, relayproto.RoleDevice)
	st := srv.Stats()
	if st.DeviceAttaches != 2 || st.DeviceReattaches != 1 {
		t.Fatalf("attaches %d, reattaches %d; want 2, 1", st.DeviceAttaches, st.DeviceReattaches)
	}
}

// TestRecentRefusalsBounded: the ring keeps the newest MaxRecentRefusals.
func TestRecentRefusalsBounded(t *testing.T) {
	var l refusalLog
	s := &Server{}
	for i := range MaxRecentRefusals + 7 {
		l.add(Refusal{Reason: string(rune('a' + i%26)), Time: time.Unix(int64(i), 0)})
	}
	s.refused.ring, s.refused.next = l.ring, l.next
	got := s.RecentRefusals()
	if len(got) != MaxRecentRefusals {
		t.Fatalf("%d kept", len(got))
	}
	for i, r := range got {
		if want := int64(MaxRecentRefusals + 6 - i); r.Time.Unix() != want {
			t.Fatalf("refusal %d is #%d, want #%d", i, r.Time.Unix(), want)
		}
	}
}

// TestPreauthCounted: per-address and global pre-auth rejections and an
// expired pending connection are counted.
func TestPreauthCounted(t *testing.T) {
	srv, addr := serve(t, Config{AllowDevice: allowAll, MaxPendingPerIP: 1, MaxPending: 2, HandshakeTimeout: 300 * time.Millisecond})
	dialFrom(t, "127.0.0.1", addr)
	waitStats(t, srv, "pending", func(st Stats) bool { return st.Pending == 1 })
	dialFrom(t, "127.0.0.1", addr) // the address holds one already
	dialFrom(t, "127.0.0.2", addr)
	waitStats(t, srv, "pending", func(st Stats) bool { return st.Pending == 2 && st.PreauthPerIP == 1 })
	dialFrom(t, "127.0.0.3", addr) // closes the oldest
	waitStats(t, srv, "evicted", func(st Stats) bool { return st.PreauthGlobal == 1 })
	// The two left expire.
	waitStats(t, srv, "expired", func(st Stats) bool { return st.HandshakeFailures[HandshakeTimeout] == 2 })
}

var errTestToken = errors.New("unknown token")

// enroll connects as the device id with an enrollment token.
func enroll(t *testing.T, addr string, id *identity.Identity, token string) *agent {
	t.Helper()
	a := connect(t, addr)
	a.id = id
	p := relayproto.AppendClientHello(nil, relayproto.ClientHello{
		MinVersion: 1, MaxVersion: 1, Role: relayproto.RoleDevice, Instance: 7, PublicKey: id.PublicKey(),
		Extensions: []relayproto.Extension{{Type: relayproto.ExtEnrollToken, Value: []byte(token)}},
	}, a.exporter(), id.Sign)
	a.write(relayproto.FrameClientHello, p)
	a.write(relayproto.FrameAccess, relayproto.AppendAccess(nil, relayproto.AccessFirst|relayproto.AccessLast, nil))
	if token == "good" {
		if typ, _ := a.read(); typ != relayproto.FrameServerHello {
			t.Fatalf("enrolling with a good token: got %s", typ)
		}
	}
	return a
}
