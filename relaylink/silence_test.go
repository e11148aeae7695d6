package relaylink

import (
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/relay"
	"github.com/burrow-tunnel/burrow/relayproto"
)

// freezer is a TCP proxy to a relay that can go dark: from freeze on it
// forwards nothing either way and closes nothing, as a network that
// blackholes the relay.
type freezer struct {
	ln     net.Listener
	to     string
	frozen atomic.Bool
	wg     sync.WaitGroup
	mu     sync.Mutex
	conns  []net.Conn
}

func newFreezer(t *testing.T, to string) *freezer {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &freezer{ln: ln, to: to}
	f.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			r, err := net.Dial("tcp", to)
			if err != nil {
				c.Close()
				continue
			}
			f.mu.Lock()
			f.conns = append(f.conns, c, r)
			f.mu.Unlock()
			f.wg.Go(func() { f.pipe(r, c) })
			f.wg.Go(func() { f.pipe(c, r) })
		}
	})
	t.Cleanup(func() {
		ln.Close()
		f.mu.Lock()
		for _, c := range f.conns {
			c.Close()
		}
		f.mu.Unlock()
		f.wg.Wait()
	})
	return f
}

func (f *freezer) pipe(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 && !f.frozen.Load() {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// TestSilentRelay: a Link carrying packets notices a relay gone dark in
// seconds (ErrSilent), far inside its 3 keepalive intervals; an idle Link
// waits for its keepalive, pinging no more than that.
func TestSilentRelay(t *testing.T) {
	rid, _ := identity.Generate()
	srv, err := relay.New(relay.Config{Identity: rid, KeepAlive: time.Minute, AllowDevice: func(identity.ID) bool { return true }})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	defer srv.Close()
	dial := func(f *freezer) (*Link, *reader) {
		id, _ := identity.Generate()
		cfg := Config{Relay: RelayConfig{Addr: f.ln.Addr().String(), ID: rid.ID()}, Identity: id, Role: relayproto.RoleDevice}
		l, err := Dial(t.Context(), cfg, State{Access: AccessList(nil, nil)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { l.Close() })
		return l, read(l)
	}
	busyF, idleF := newFreezer(t, ln.Addr().String()), newFreezer(t, ln.Addr().String())
	busy, busyR := dial(busyF)
	_, idleR := dial(idleF)

	// The busy link sends to a client that is not there: the relay
	// answers every packet with a peer-gone, until it goes dark.
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(50 * time.Millisecond):
				busy.Send(relayproto.Addr{ID: identity.ID{9}, Instance: 1}, []byte("anyone?"))
			}
		}
	}()
	time.Sleep(300 * time.Millisecond)
	busyF.frozen.Store(true)
	idleF.frozen.Store(true)
	start := time.Now()
	var err2 error
	for err2 == nil {
		select {
		case err2 = <-busyR.err:
		case <-busyR.msgs:
		case <-time.After(10 * time.Second):
			t.Fatal("the busy link did not notice the relay went dark in 10s")
		}
	}
	took := time.Since(start)
	if !errors.Is(err2, ErrSilent) {
		t.Fatalf("the busy link ended with %v, want ErrSilent", err2)
	}
	t.Logf("busy link noticed the dark relay in %v: %v", took, err2)
	if limit := silenceSuspect + silenceProbe + 2*silenceTick; took > limit+500*time.Millisecond {
		t.Errorf("noticed after %v, want about %v", took, limit)
	}
	select {
	case err := <-idleR.err:
		t.Fatalf("the idle link ended after %v: %v (it should wait for its keepalive)", time.Since(start), err)
	default:
	}
}
