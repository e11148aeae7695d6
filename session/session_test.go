package session

import (
	"bytes"
	"context"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/paths"
)

// fakePaths is a [PathLayer] that records the searches started on it and
// reports a fixed path; it has no direct paths to offer.
type fakePaths struct {
	path paths.PathInfo

	mu      sync.Mutex
	started []paths.DirectConfig // guarded by mu
	peers   []net.Addr           // guarded by mu
}

func (f *fakePaths) StartDirect(peer net.Addr, cfg paths.DirectConfig) (*paths.Direct, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.started = append(f.started, cfg)
	f.peers = append(f.peers, peer)
	return nil, paths.ErrNoDirect
}

func (f *fakePaths) Path(net.Addr) paths.PathInfo { return f.path }

func (f *fakePaths) searches() ([]paths.DirectConfig, []net.Addr) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]paths.DirectConfig(nil), f.started...), append([]net.Addr(nil), f.peers...)
}

// pair is a client and a device session over plain UDP sockets on
// loopback, with their control streams served.
type pair struct {
	client, device       *Session
	clientCtl, deviceCtl *Control
}

// startPair dials a session between two endpoints on UDP sockets, each with
// the path layer given (nil for none), and serves its control stream on
// both sides with opts.
func startPair(t *testing.T, clientPaths, devicePaths PathLayer, opts ControlOptions) pair {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	endpoint := func(pl PathLayer) (*Endpoint, *identity.Identity) {
		id, err := identity.Generate()
		if err != nil {
			t.Fatal(err)
		}
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ep, err := NewEndpoint(pc, Config{Identity: id, Paths: pl})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			ep.Close()
			pc.Close()
		})
		return ep, id
	}
	cep, _ := endpoint(clientPaths)
	dep, did := endpoint(devicePaths)
	ln, err := dep.Listen()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })

	var p pair
	accepted := make(chan error, 1)
	go func() {
		s, err := ln.Accept(ctx)
		if err != nil {
			accepted <- err
			return
		}
		p.device = s
		in, err := s.AcceptTunnel(ctx)
		if err != nil {
			accepted <- err
			return
		}
		if req, err := in.Request(); err != nil || req.Kind != KindControl {
			t.Errorf("request %+v, %v; want a control stream", req, err)
		}
		p.deviceCtl, err = in.AcceptControl()
		accepted <- err
	}()
	p.client, err = cep.Dial(ctx, dep.tr.Conn.LocalAddr(), did.ID())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.client.Close(CloseNormal, "") })
	if p.clientCtl, err = p.client.OpenControl(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-accepted; err != nil {
		t.Fatal(err)
	}
	for _, ctl := range []*Control{p.clientCtl, p.deviceCtl} {
		done := make(chan struct{})
		go func() {
			defer close(done)
			ctl.Run(opts)
		}()
		t.Cleanup(func() {
			p.client.Close(CloseNormal, "")
			p.device.Close(CloseNormal, "")
			<-done
		})
	}
	return p
}

// TestWithoutPathLayer: an endpoint on a plain UDP socket runs sessions and
// their control streams; its sessions report the relay as their path.
func TestWithoutPathLayer(t *testing.T) {
	p := startPair(t, nil, nil, ControlOptions{})
	if rtt, err := p.clientCtl.Ping(t.Context()); err != nil || rtt <= 0 {
		t.Fatalf("ping: %v, %v", rtt, err)
	}
	if rtt, err := p.deviceCtl.Ping(t.Context()); err != nil || rtt <= 0 {
		t.Fatalf("ping from the device: %v, %v", rtt, err)
	}
	if got := p.client.Path(); got != (paths.PathInfo{}) {
		t.Fatalf("path %v without a path layer", got)
	}
}

// TestPathLayerSignalling: the control stream starts one direct-path search
// on each side's path layer, for the peer's address, with the same key on
// both sides and one initiator (the client); the send function it hands the
// search carries messages to the peer on the control stream. The session
// reports the path the layer gives.
func TestPathLayerSignalling(t *testing.T) {
	direct := paths.PathInfo{Direct: true, Addr: netip.MustParseAddrPort("192.0.2.1:4242")}
	cp, dp := &fakePaths{path: direct}, &fakePaths{}
	p := startPair(t, cp, dp, ControlOptions{})

	var cs, ds []paths.DirectConfig
	deadline := time.Now().Add(10 * time.Second)
	for {
		var cpeers, dpeers []net.Addr
		cs, cpeers = cp.searches()
		ds, dpeers = dp.searches()
		if len(cs) == 1 && len(ds) == 1 {
			if cpeers[0].String() != p.client.RemoteAddr().String() || dpeers[0].String() != p.device.RemoteAddr().String() {
				t.Fatalf("searches for %v and %v, want the sessions' peers", cpeers[0], dpeers[0])
			}
			break
		}
		if len(cs) > 1 || len(ds) > 1 || time.Now().After(deadline) {
			t.Fatalf("searches started: client %d, device %d; want one each", len(cs), len(ds))
		}
		time.Sleep(10 * time.Millisecond)
	}
	if !cs[0].Initiator || ds[0].Initiator {
		t.Fatalf("initiator: client %v, device %v", cs[0].Initiator, ds[0].Initiator)
	}
	if len(cs[0].Key) < 16 || !bytes.Equal(cs[0].Key, ds[0].Key) {
		t.Fatalf("keys %x and %x: want the same secret on both sides", cs[0].Key, ds[0].Key)
	}
	if cs[0].Signal == nil || ds[0].Signal == nil {
		t.Fatal("no send function for the search's signalling")
	}
	// A device without a search ignores the messages; the stream goes on.
	cs[0].Signal([]byte{1, 0, 0, 0, 1})
	ds[0].Signal([]byte{1, 0, 0, 0, 1})
	if _, err := p.clientCtl.Ping(t.Context()); err != nil {
		t.Fatalf("ping after signalling: %v", err)
	}
	if got := p.client.Path(); got != direct {
		t.Fatalf("client path %v, want the path layer's %v", got, direct)
	}
	if got := p.device.Path(); got != (paths.PathInfo{}) {
		t.Fatalf("device path %v, want its path layer's (the relay)", got)
	}
}

// TestDisableDirect: with direct paths off, the control stream starts no
// search even on a path layer.
func TestDisableDirect(t *testing.T) {
	cp, dp := &fakePaths{}, &fakePaths{}
	p := startPair(t, cp, dp, ControlOptions{DisableDirect: true})
	if _, err := p.clientCtl.Ping(t.Context()); err != nil {
		t.Fatal(err)
	}
	if _, err := p.deviceCtl.Ping(t.Context()); err != nil {
		t.Fatal(err)
	}
	cs, _ := cp.searches()
	ds, _ := dp.searches()
	if len(cs)+len(ds) != 0 {
		t.Fatalf("searches with direct paths off: client %d, device %d", len(cs), len(ds))
	}
}
