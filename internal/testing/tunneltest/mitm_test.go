package tunneltest

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/burrow-tunnel/burrow/device"
	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/relayproto"
)

// TestMaliciousRelay: a relay that the agents trust (they pin its key)
// turns against them and puts itself in the middle of the end-to-end
// session with keys of its own. Toward the client it routes the packets
// meant for the device to an impostor device (its own key, willing to serve
// the client); toward the device it lets in a client of its own key (it
// adds that key to the device's access list). Both ends abort: the client
// refuses the impostor's key, the device refuses the unknown client, and
// neither the device nor the impostor dials a service. When the relay stops
// meddling, the same client reaches the device.
func TestMaliciousRelay(t *testing.T) {
	r := NewRelay(t)
	evil := &mitm{}
	r.Wrap = evil.wrap
	r.Start()

	echo := StartServer(t, Echo)
	var mu sync.Mutex
	dials := map[string][]string{}
	dialHook := func(who string) func(context.Context, string, string) (net.Conn, error) {
		return func(ctx context.Context, network, addr string) (net.Conn, error) {
			mu.Lock()
			dials[who] = append(dials[who], addr)
			mu.Unlock()
			return (&net.Dialer{}).DialContext(ctx, network, addr)
		}
	}
	cid, did, mid, eid := NewIdentity(t), NewIdentity(t), NewIdentity(t), NewIdentity(t)
	evil.set(cid.ID(), did.ID(), mid.ID(), eid.ID())
	d := StartDevice(t, r, device.Config{
		Identity:    did,
		Services:    map[string]string{"echo": echo.Addr},
		Clients:     map[identity.ID][]string{cid.ID(): {"echo"}},
		DialService: dialHook("device"),
	})
	// The impostor would serve the client, so only the client's pinning
	// of the device key stands between them.
	impostor := StartDevice(t, r, device.Config{
		Identity:    mid,
		Services:    map[string]string{"echo": echo.Addr},
		Clients:     map[identity.ID][]string{cid.ID(): {"echo"}},
		DialService: dialHook("impostor"),
	})
	c := StartClient(t, r, cid)
	evilClient := StartClient(t, r, eid)

	_, err := c.Dial(ctx10(t), d.ID(), "echo")
	mismatch, ok := errors.AsType[*identity.KeyMismatchError](err)
	if !ok {
		t.Fatalf("client dialing through the malicious relay: %v, want a key mismatch", err)
	}
	if mismatch.Expected != d.ID() || mismatch.Got != impostor.ID() {
		t.Fatalf("key mismatch %+v: want expected %s, got %s", mismatch, d.ID(), impostor.ID())
	}
	if evil.toImpostor.Load() == 0 || evil.fromImpostor.Load() == 0 {
		t.Fatalf("the relay's substitution did not happen (%d packets to the impostor, %d back)",
			evil.toImpostor.Load(), evil.fromImpostor.Load())
	}
	t.Logf("client aborted: %v", err)

	// The relay's own client, let through to the device by the relay.
	tun, err := evilClient.Dial(ctx10(t), d.ID(), "echo")
	if err == nil {
		tun.Close()
		t.Fatal("the device opened a tunnel for a client it does not know")
	}
	if evil.injected.Load() == 0 {
		t.Fatal("the relay did not add its client to the device's access list")
	}
	t.Logf("device refused the relay's client: %v", err)

	mu.Lock()
	if len(dials) != 0 {
		t.Errorf("services dialed under attack: %v", dials)
	}
	mu.Unlock()
	if n := echo.Accepted.Load(); n != 0 {
		t.Errorf("the service accepted %d connections under attack", n)
	}

	// The same agents, once the relay is honest again.
	evil.off.Store(true)
	if err := echoOnce(t, c, d.ID(), "echo"); err != nil {
		t.Fatalf("after the attack: %v", err)
	}
}

// mitm is the malicious relay's meddling, applied to the relay's
// plaintext (after TLS) of every agent connection: it rewrites the frames
// the relay reads and writes.
type mitm struct {
	off                                 atomic.Bool
	mu                                  sync.Mutex
	client, device, impostor, evilAgent identity.ID

	toImpostor, fromImpostor, injected atomic.Int64
}

func (m *mitm) set(client, device, impostor, evilAgent identity.ID) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.client, m.device, m.impostor, m.evilAgent = client, device, impostor, evilAgent
}

func (m *mitm) ids() (client, device, impostor, evilAgent identity.ID) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.client, m.device, m.impostor, m.evilAgent
}

func (m *mitm) wrap(c net.Conn) net.Conn {
	pr, pw := io.Pipe()
	mc := &mitmConn{Conn: c.(*tls.Conn), m: m, in: pr}
	go func() { pw.CloseWithError(mc.pumpIn(pw)) }()
	return mc
}

// A mitmConn is one agent's connection as the relay sees it.
type mitmConn struct {
	*tls.Conn
	m     *mitm
	in    *io.PipeReader              // what the relay reads: the agent's frames, rewritten
	agent atomic.Pointer[identity.ID] // from the agent's hello

	mu     sync.Mutex
	out    []byte // what the relay wrote that is not a whole frame yet
	framed bool   // the HTTP answer is out; frames follow
}

func (c *mitmConn) Read(p []byte) (int, error) { return c.in.Read(p) }

func (c *mitmConn) Close() error {
	c.in.Close()
	return c.Conn.Close()
}

// pumpIn copies the agent's upgrade request, then its frames, rewritten,
// to w.
func (c *mitmConn) pumpIn(w io.Writer) error {
	br := bufio.NewReader(c.Conn)
	for {
		line, err := br.ReadSlice('\n')
		if _, werr := w.Write(line); werr != nil {
			return werr
		}
		if err != nil {
			return err
		}
		if string(line) == "\r\n" {
			break
		}
	}
	for {
		t, n, err := relayproto.ReadHeader(br)
		if err != nil {
			return err
		}
		p := make([]byte, n)
		if _, err := io.ReadFull(br, p); err != nil {
			return err
		}
		p = c.fromAgent(t, p)
		if _, err := w.Write(append(relayproto.AppendHeader(nil, t, len(p)), p...)); err != nil {
			return err
		}
	}
}

// fromAgent rewrites a frame on its way from the agent to the relay.
func (c *mitmConn) fromAgent(t relayproto.FrameType, p []byte) []byte {
	if t == relayproto.FrameClientHello {
		st := c.ConnectionState()
		if exp, err := st.ExportKeyingMaterial(relayproto.ExporterLabel, nil, relayproto.ExporterLen); err == nil {
			if h, err := relayproto.ParseClientHello(p, exp); err == nil {
				id := identity.IDOf(h.PublicKey)
				c.agent.Store(&id)
			}
		}
		return p
	}
	agent := c.agent.Load()
	if agent == nil || c.m.off.Load() {
		return p
	}
	client, dev, impostor, evilAgent := c.m.ids()
	switch {
	case t == relayproto.FrameSendPacket && *agent == client:
		// The client's packets for the device go to the impostor.
		if dst, _, err := relayproto.ParsePacket(p); err == nil && dst.ID == dev {
			copy(p, relayproto.AppendAddr(nil, relayproto.Addr{ID: impostor}))
			c.m.toImpostor.Add(1)
		}
	case t == relayproto.FrameAccess && *agent == dev:
		// The relay's own client joins the device's access list.
		flags, entries, err := relayproto.ParseAccess(p, nil)
		if err == nil && flags&relayproto.AccessLast != 0 && evilAgent != (identity.ID{}) {
			entries = append(entries, relayproto.AccessEntry{Kind: relayproto.AccessClient, Value: evilAgent})
			c.m.injected.Add(1)
			return relayproto.AppendAccess(nil, flags, entries)
		}
	}
	return p
}

// Write passes the relay's HTTP answer on, then its frames, rewritten.
func (c *mitmConn) Write(b []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.out = append(c.out, b...)
	if !c.framed {
		i := indexCRLF2(c.out)
		if i < 0 {
			return len(b), nil
		}
		if _, err := c.Conn.Write(c.out[:i]); err != nil {
			return 0, err
		}
		c.out, c.framed = c.out[i:], true
	}
	for len(c.out) >= relayproto.HeaderLen {
		t, n, err := relayproto.ParseHeader(c.out[:relayproto.HeaderLen])
		if err != nil {
			return 0, err
		}
		end := relayproto.HeaderLen + int(n)
		if len(c.out) < end {
			break
		}
		c.toAgent(t, c.out[relayproto.HeaderLen:end])
		if _, err := c.Conn.Write(c.out[:end]); err != nil {
			return 0, err
		}
		c.out = c.out[end:]
	}
	c.out = append([]byte(nil), c.out...)
	return len(b), nil
}

// toAgent rewrites, in place, a frame on its way from the relay to the
// agent: the impostor's packets reach the client as the device's.
func (c *mitmConn) toAgent(t relayproto.FrameType, p []byte) {
	agent := c.agent.Load()
	if agent == nil || c.m.off.Load() || t != relayproto.FrameRecvPacket {
		return
	}
	client, dev, impostor, _ := c.m.ids()
	if src, _, err := relayproto.ParsePacket(p); err == nil && *agent == client && src.ID == impostor {
		copy(p, relayproto.AppendAddr(nil, relayproto.Addr{ID: dev}))
		c.m.fromImpostor.Add(1)
	}
}

// indexCRLF2 returns the index just past the first blank line in b, or -1.
func indexCRLF2(b []byte) int {
	for i := 0; i+4 <= len(b); i++ {
		if string(b[i:i+4]) == "\r\n\r\n" {
			return i + 4
		}
	}
	return -1
}
