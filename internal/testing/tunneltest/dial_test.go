package tunneltest

import (
	"context"
	"crypto/tls"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/burrow-tunnel/burrow/device"
	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/paths"
	"github.com/burrow-tunnel/burrow/relayproto"
	"github.com/burrow-tunnel/burrow/session"
)

// rawQUIC opens an E2E QUIC connection to dev as id without the session
// package's checks, so that a test can send any bytes on its streams.
func rawQUIC(t *testing.T, r *Relay, id *identity.Identity, dev identity.ID) *quic.Conn {
	t.Helper()
	pc := ListenPaths(t, r, paths.Config{Identity: id, Role: relayproto.RoleClient})
	if err := pc.WaitAttached(ctx10(t)); err != nil {
		t.Fatal(err)
	}
	cert, err := id.Certificate()
	if err != nil {
		t.Fatal(err)
	}
	tr := &quic.Transport{Conn: pc}
	t.Cleanup(func() { tr.Close() })
	c, err := tr.Dial(ctx10(t), paths.Addr{ID: dev}, &tls.Config{
		MinVersion:         tls.VersionTLS13,
		Certificates:       []tls.Certificate{cert},
		NextProtos:         []string{session.ALPN},
		ServerName:         "burrow",
		InsecureSkipVerify: true,
		VerifyConnection:   identity.VerifyPinned("device", dev),
	}, &quic.Config{InitialPacketSize: session.PacketSize, DisablePathMTUDiscovery: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.CloseWithError(0, "") })
	return c
}

// TestDeviceDialsOnlyItsServices: whatever a client (an authorized one,
// with every right) asks for, the device dials nothing but the addresses
// of its configured services: a dial hook sees exactly the one dial of the
// one valid request.
func TestDeviceDialsOnlyItsServices(t *testing.T) {
	echo := StartServer(t, Echo)
	r := StartRelay(t)
	cid := NewIdentity(t)
	var mu sync.Mutex
	var dials []string
	d := StartDevice(t, r, device.Config{
		Services: map[string]string{"echo": echo.Addr},
		Clients:  map[identity.ID][]string{cid.ID(): {device.AllServices}},
		DialService: func(ctx context.Context, network, addr string) (net.Conn, error) {
			mu.Lock()
			dials = append(dials, network+" "+addr)
			mu.Unlock()
			return (&net.Dialer{}).DialContext(ctx, network, addr)
		},
	})
	c := rawQUIC(t, r, cid, d.ID())

	hostile := [][]byte{}
	for _, name := range []string{
		"127.0.0.1:22", "[::1]:22", "localhost:80", "fe80::1%eth0", "169.254.169.254:80",
		"127.0.0.1", "169.254.169.254", "localhost", "::1", "0.0.0.0", "ssh", "ECHO", "echo:7",
		"echo/../admin", "echo\x00", " echo", "echo ", "*", strings.Repeat("e", 63), "",
		echo.Addr,
	} {
		hostile = append(hostile, session.AppendRequest(nil, session.Request{Kind: session.KindTunnel, Service: name}))
	}
	hostile = append(hostile,
		[]byte{2, 1, 4, 'e', 'c', 'h', 'o', 0, 0},       // another version
		[]byte{1, 9, 4, 'e', 'c', 'h', 'o', 0, 0},       // another kind
		[]byte{1, 1, 4, 'e', 'c', 'h', 'o', 0xff, 0xff}, // extensions over the limit
		[]byte{1, 1, 200}, // a length past the limit
		session.AppendRequest(nil, session.Request{Kind: session.KindPair, Secret: []byte("127.0.0.1:22")}),
	)
	for _, req := range hostile {
		str, err := c.OpenStreamSync(ctx10(t))
		if err != nil {
			t.Fatal(err)
		}
		str.SetDeadline(time.Now().Add(10 * time.Second))
		str.Write(req)
		str.Close()
		rep, err := session.ReadReply(str)
		if err == nil && rep.Code == session.CodeOK {
			t.Errorf("request % q accepted", req)
		}
		str.CancelRead(0)
	}
	// The one valid request: one dial, to the service's address.
	str, err := c.OpenStreamSync(ctx10(t))
	if err != nil {
		t.Fatal(err)
	}
	str.SetDeadline(time.Now().Add(10 * time.Second))
	str.Write(session.AppendRequest(nil, session.Request{Kind: session.KindTunnel, Service: "echo"}))
	if rep, err := session.ReadReply(str); err != nil || rep.Code != session.CodeOK {
		t.Fatalf("valid request: %+v, %v", rep, err)
	}
	str.Close()
	str.CancelRead(0)

	mu.Lock()
	defer mu.Unlock()
	if len(dials) != 1 || dials[0] != "tcp "+echo.Addr {
		t.Fatalf("the device dialed %q, want only %q", dials, "tcp "+echo.Addr)
	}
}
