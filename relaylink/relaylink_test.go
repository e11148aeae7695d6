package relaylink

import (
	"context"
	"errors"
	"fmt"
	"net"
	"reflect"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/burrow-tunnel/burrow/fleet"
	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/relay"
	"github.com/burrow-tunnel/burrow/relayproto"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestIsPermanent: only what a configuration change fixes counts as
// permanent; a relay that refuses for now (overloaded, draining, too many
// sessions from this address) does not.
func TestIsPermanent(t *testing.T) {
	refused := func(code relayproto.RefuseCode) error {
		return fmt.Errorf("attach: %w", &AttachRefusedError{Relay: "r:443", Refuse: relayproto.Refuse{Code: code}})
	}
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{refused(relayproto.RefuseOverloaded), false},
		{refused(relayproto.RefuseShuttingDown), false},
		{refused(relayproto.RefuseTooMany), false},
		{refused(relayproto.RefuseNotAllowed), true},
		{&UntrustedRelayError{Relay: "r:443", Err: errors.New("x509")}, true},
		{&identity.KeyMismatchError{Peer: "relay"}, true},
		{fmt.Errorf("relay TLS handshake: %w", &fleet.NotInFleetError{}), true},
		{fmt.Errorf("relay TLS handshake: %w", &fleet.RollbackError{}), false},
		{ErrIdle, false},
		{errors.New("connection refused"), false},
	} {
		if got := isPermanent(tc.err); got != tc.want {
			t.Errorf("isPermanent(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}

// TestStateFrames: a device's access list goes out in frames of at most
// MaxAccessPerFrame entries, the first and last marked, even when it is
// empty; a client sends none; pairing intents follow, one frame each.
func TestStateFrames(t *testing.T) {
	var long []identity.ID
	for i := range relayproto.MaxAccessPerFrame + 3 {
		long = append(long, identity.ID{byte(i), byte(i >> 8)})
	}
	intent := relayproto.PairIntent{Device: identity.ID{9}, Token: [32]byte{7}}
	for _, tc := range []struct {
		name    string
		role    relayproto.Role
		st      State
		access  []int // entries per access frame
		intents int
	}{
		{"empty device", relayproto.RoleDevice, State{}, []int{0}, 0},
		{"device", relayproto.RoleDevice, State{Access: AccessList(long[:2], [][32]byte{{1}})}, []int{3}, 0},
		{"long device", relayproto.RoleDevice, State{Access: AccessList(long, nil)}, []int{relayproto.MaxAccessPerFrame, 3}, 0},
		{"client", relayproto.RoleClient, State{Intents: []relayproto.PairIntent{intent}}, nil, 1},
		{"client with no intents", relayproto.RoleClient, State{}, nil, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var access []int
			var entries []relayproto.AccessEntry
			intents := 0
			frames := tc.st.frames(tc.role)
			for i, f := range frames {
				typ, n, err := relayproto.ParseHeader(f)
				if err != nil || int(n) != len(f)-relayproto.HeaderLen {
					t.Fatalf("frame %d: header %v, %d bytes of %d", i, err, n, len(f))
				}
				p := f[relayproto.HeaderLen:]
				switch typ {
				case relayproto.FrameAccess:
					flags, all, err := relayproto.ParseAccess(p, entries)
					if err != nil {
						t.Fatal(err)
					}
					if first := len(access) == 0; (flags&relayproto.AccessFirst != 0) != first {
						t.Fatalf("access frame %d: flags %b", len(access), flags)
					}
					if last := i == len(frames)-1-tc.intents; (flags&relayproto.AccessLast != 0) != last {
						t.Fatalf("access frame %d: flags %b", len(access), flags)
					}
					access = append(access, len(all)-len(entries))
					entries = all
				case relayproto.FramePairIntent:
					in, err := relayproto.ParsePairIntent(p)
					if err != nil || in != intent {
						t.Fatalf("intent %v, %v", in, err)
					}
					intents++
				default:
					t.Fatalf("frame %d is %s", i, typ)
				}
			}
			if !reflect.DeepEqual(access, tc.access) || intents != tc.intents {
				t.Fatalf("access frames of %v entries and %d intents, want %v and %d", access, intents, tc.access, tc.intents)
			}
			if len(tc.st.Access) > 0 && !reflect.DeepEqual(entries, tc.st.Access) {
				t.Fatal("the access list did not survive its frames")
			}
		})
	}
}

// reader reads a Link on a goroutine of its own, until it fails.
type reader struct {
	msgs chan any
	err  chan error
}

func read(l *Link) *reader {
	r := &reader{msgs: make(chan any, 64), err: make(chan error, 1)}
	go func() {
		for {
			m, err := l.Read()
			if err != nil {
				r.err <- err
				return
			}
			r.msgs <- m
		}
	}()
	return r
}

// next returns the next message that is not a Pong (unless a Pong is what
// the caller waits for).
func (r *reader) next(t *testing.T, pong bool) any {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case m := <-r.msgs:
			if _, isPong := m.(Pong); isPong != pong {
				if p, ok := m.(*Packet); ok {
					p.Release()
				}
				continue
			}
			return m
		case err := <-r.err:
			t.Fatalf("Read: %v", err)
		case <-timeout:
			t.Fatal("no message")
		}
	}
}

// TestLink: over a real relay, a Link reads typed messages: the packets a
// peer sent (with its address), the relay's notice that a peer is not
// there, the answer to its keepalive ping, and the relay's go-away, after
// which Read fails; a closed Link's Read fails with ErrClosed.
func TestLink(t *testing.T) {
	rid, _ := identity.Generate()
	srv, err := relay.New(relay.Config{Identity: rid, KeepAlive: time.Second, AllowDevice: func(identity.ID) bool { return true }})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	defer srv.Close()
	devID, _ := identity.Generate()
	cliID, _ := identity.Generate()
	cfg := Config{Relay: RelayConfig{Addr: ln.Addr().String(), ID: rid.ID()}}
	ctx := t.Context()

	dcfg := cfg
	dcfg.Identity, dcfg.Role = devID, relayproto.RoleDevice
	dev, err := Dial(ctx, dcfg, State{Access: AccessList([]identity.ID{cliID.ID()}, nil)})
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	if dev.RelayID() != rid.ID() {
		t.Fatalf("relay ID %v, want %v", dev.RelayID(), rid.ID())
	}
	ccfg := cfg
	ccfg.Identity, ccfg.Role, ccfg.Instance = cliID, relayproto.RoleClient, 7
	cli, err := Dial(ctx, ccfg, State{})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	dr, cr := read(dev), read(cli)

	devAddr := relayproto.Addr{ID: devID.ID()}
	if !cli.Send(devAddr, []byte("hello")) {
		t.Fatal("Send dropped the packet")
	}
	p, ok := dr.next(t, false).(*Packet)
	if !ok || p.From != (relayproto.Addr{ID: cliID.ID(), Instance: 7}) || string(p.Data) != "hello" {
		t.Fatalf("device read %#v", p)
	}
	p.Release()

	nobody := relayproto.Addr{ID: identity.ID{1}}
	cli.Send(nobody, []byte("anyone?"))
	if g, ok := cr.next(t, false).(relayproto.PeerGone); !ok || g.Peer != nobody {
		t.Fatalf("client read %#v, want peer-gone for %v", g, nobody)
	}

	if pong, ok := cr.next(t, true).(Pong); !ok || pong.RTT <= 0 {
		t.Fatalf("client read %#v, want a pong", pong)
	}

	srv.Disconnect(devID.ID())
	if ga, ok := dr.next(t, false).(relayproto.GoAway); !ok || ga.Reason != relayproto.GoAwayRemoved {
		t.Fatalf("device read %#v, want a go-away", ga)
	}
	select {
	case err := <-dr.err:
		t.Logf("after the go-away: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("Read went on after the go-away")
	}
	dev.Close()

	cli.Close()
	if err := <-cr.err; !errors.Is(err, ErrClosed) {
		t.Fatalf("Read after Close: %v, want ErrClosed", err)
	}
	if cli.Context().Err() == nil {
		t.Fatal("a closed Link's context is not done")
	}
}

// TestDialRefused: a relay that refuses the agent fails Dial with an
// AttachRefusedError that says why.
func TestDialRefused(t *testing.T) {
	rid, _ := identity.Generate()
	srv, err := relay.New(relay.Config{Identity: rid, AllowDevice: func(identity.ID) bool { return false }})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	defer srv.Close()
	id, _ := identity.Generate()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	_, err = Dial(ctx, Config{Relay: RelayConfig{Addr: ln.Addr().String(), ID: rid.ID()}, Identity: id, Role: relayproto.RoleDevice}, State{})
	refused, ok := errors.AsType[*AttachRefusedError](err)
	if !ok || refused.Code != relayproto.RefuseNotAllowed || !isPermanent(err) {
		t.Fatalf("Dial: %v, want a refusal of a device not allowed", err)
	}
}
