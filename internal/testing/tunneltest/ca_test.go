package tunneltest

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/burrow-tunnel/burrow/client"
	"github.com/burrow-tunnel/burrow/device"
	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/paths"
	"github.com/burrow-tunnel/burrow/relay"
	"github.com/burrow-tunnel/burrow/relaylink"
)

// A testAuthority is a certificate authority that agents in a test trust
// (its pool stands in for the system roots).
type testAuthority struct {
	cert  *x509.Certificate
	key   *ecdsa.PrivateKey
	roots *x509.CertPool
}

func newTestAuthority(t *testing.T) *testAuthority {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "test root"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	return &testAuthority{cert: ca, key: caKey, roots: roots}
}

// issue returns a server certificate for 127.0.0.1 of key, signed by the
// authority.
func (a *testAuthority) issue(t *testing.T, key crypto.Signer) tls.Certificate {
	t.Helper()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: "relay"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		KeyUsage:     x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, a.cert, key.Public(), a.key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// testCA makes a certificate authority and a relay certificate it signed
// for 127.0.0.1, written as PEM files; it returns their paths and a pool
// holding the CA, which stands in for the system roots.
func testCA(t *testing.T) (certFile, keyFile string, roots *x509.CertPool) {
	t.Helper()
	a := newTestAuthority(t)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	cert := a.issue(t, key)
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Certificate[0]}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile, a.roots
}

// TestCASignedRelay: a relay serving a CA-signed certificate is trusted by
// agents holding the root; agents that pin its ID get its identity
// certificate instead, and need no root.
func TestCASignedRelay(t *testing.T) {
	certFile, keyFile, roots := testCA(t)
	get, err := relay.CertFile(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	r := NewRelay(t)
	r.GetCertificate = get
	r.Start()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	attach := func(cfg relaylink.RelayConfig) error {
		c := NewClient(t, client.Config{Relay: cfg})
		defer c.Close()
		return c.WaitAttached(ctx)
	}
	if err := attach(relaylink.RelayConfig{Addr: r.Addr, RootCAs: roots}); err != nil {
		t.Fatalf("trusted CA, no pin: %v", err)
	}
	if err := attach(relaylink.RelayConfig{Addr: r.Addr, RootCAs: roots, ID: r.Identity.ID()}); err != nil {
		t.Fatalf("trusted CA, right pin: %v", err)
	}
	if err := attach(relaylink.RelayConfig{Addr: r.Addr, ID: r.Identity.ID()}); err != nil {
		t.Fatalf("right pin, CA not trusted: %v", err)
	}
	wrong := NewIdentity(t).ID()
	err = attach(relaylink.RelayConfig{Addr: r.Addr, RootCAs: roots, ID: wrong})
	var km *identity.KeyMismatchError
	if !errors.As(err, &km) || km.Expected != wrong || km.Got != r.Identity.ID() {
		t.Fatalf("trusted CA, wrong pin: err = %v, want a key mismatch naming the relay's ID", err)
	}
	// Without the root (the system roots do not hold this test CA).
	err = attach(relaylink.RelayConfig{Addr: r.Addr})
	var untrusted *relaylink.UntrustedRelayError
	if !errors.As(err, &untrusted) {
		t.Fatalf("untrusted CA: err = %v", err)
	}
}

// An impostorRelay is a TLS server on loopback that is not the relay the
// agents pin but holds a certificate for its address from a CA they trust
// (as anyone can get one for a host name they control, or a CA can be
// made to issue). It answers nothing and records every application byte
// that reaches it, that is every byte an agent wrote after the handshake.
type impostorRelay struct {
	Addr string
	ln   net.Listener
	wg   sync.WaitGroup

	mu       sync.Mutex
	received []byte  // guarded by mu
	hsErrs   []error // failed handshakes; guarded by mu
}

func startImpostorRelay(t *testing.T, cert tls.Certificate) *impostorRelay {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		NextProtos:   []string{"http/1.1"},
	})
	if err != nil {
		t.Fatal(err)
	}
	r := &impostorRelay{Addr: ln.Addr().String(), ln: ln}
	r.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			r.wg.Go(func() { r.serve(c.(*tls.Conn)) })
		}
	})
	t.Cleanup(r.Close)
	return r
}

func (r *impostorRelay) serve(c *tls.Conn) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	if err := c.Handshake(); err != nil {
		r.mu.Lock()
		r.hsErrs = append(r.hsErrs, err)
		r.mu.Unlock()
		return
	}
	// An agent writes its upgrade, hello and what follows in one go, then
	// waits for the answer: read until it has been quiet for a moment.
	buf := make([]byte, 4096)
	for {
		c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		n, err := c.Read(buf)
		r.mu.Lock()
		r.received = append(r.received, buf[:n]...)
		r.mu.Unlock()
		if err != nil {
			return
		}
	}
}

// Close stops the impostor and waits for its connections; it is idempotent.
func (r *impostorRelay) Close() {
	r.ln.Close()
	r.wg.Wait()
}

// TestPinnedRelayImpostor: agents that pin the relay's ID send nothing to
// an impostor whose certificate chains to a root they trust (they trust
// that root for relays that have no pin, as the system roots are). The pin
// is checked inside the TLS handshake, so the impostor sees only the
// handshake: no HTTP upgrade, no hello, no access list, no enrollment token
// (which it could otherwise use to enroll a device of its own on the real
// relay). The agent says why: a key mismatch naming the pinned relay ID and
// the one the impostor presented.
func TestPinnedRelayImpostor(t *testing.T) {
	ca := newTestAuthority(t)
	pinned := NewIdentity(t).ID() // the real relay's ID, which the agents were given
	edPub, edKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	const token = "enroll-impostor-wants-this-token"
	attachDevice := func(t *testing.T, relay relaylink.RelayConfig) error {
		directOff := paths.DirectOptions{Disable: true}
		d, err := device.New(device.Config{
			Identity:    NewIdentity(t),
			Relay:       relay,
			EnrollToken: token,
			Services:    map[string]string{"http": "127.0.0.1:1"},
			Logger:      Logger(t).With("role", "device"),
			Direct:      directOff,
			NoLAN:       true,
		})
		if err != nil {
			t.Fatal(err)
		}
		defer d.Close()
		return d.WaitAttached(ctx5(t))
	}
	attachClient := func(t *testing.T, relay relaylink.RelayConfig) error {
		c := NewClient(t, client.Config{Relay: relay})
		defer c.Close()
		return c.WaitAttached(ctx5(t))
	}
	for _, tc := range []struct {
		name   string
		key    crypto.Signer
		got    identity.ID // what the key mismatch names as presented
		attach func(*testing.T, relaylink.RelayConfig) error
	}{
		{"device, Ed25519 certificate", edKey, identity.IDOf(edPub), attachDevice},
		{"device, ECDSA certificate", ecKey, identity.ID{}, attachDevice},
		{"client, Ed25519 certificate", edKey, identity.IDOf(edPub), attachClient},
	} {
		t.Run(tc.name, func(t *testing.T) {
			imp := startImpostorRelay(t, ca.issue(t, tc.key))
			err := tc.attach(t, relaylink.RelayConfig{Addr: imp.Addr, ID: pinned, RootCAs: ca.roots})
			imp.Close()
			imp.mu.Lock()
			received, hsErrs := imp.received, imp.hsErrs
			imp.mu.Unlock()
			if len(received) > 0 {
				line, _, _ := bytes.Cut(received, []byte("\r\n"))
				t.Fatalf("the impostor received %d application bytes (first line %q; enrollment token among them: %v)",
					len(received), line, bytes.Contains(received, []byte(token)))
			}
			if len(hsErrs) == 0 {
				t.Fatal("the agent never tried the impostor")
			}
			km, ok := errors.AsType[*identity.KeyMismatchError](err)
			if !ok || km.Peer != "relay" || km.Expected != pinned || km.Got != tc.got {
				t.Fatalf("err = %v, want a relay key mismatch: expected %s, got %s", err, pinned, tc.got)
			}
			t.Logf("agent: %v; impostor: %v", err, hsErrs[0])
		})
	}
}

// ctx5 returns a context that ends after 5s or with the test.
func ctx5(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	t.Cleanup(cancel)
	return ctx
}
