package relay

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"math/big"
	"net"
	"testing"
	"time"

	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/relayproto"
)

// TestCertificateForPinnedAgents: a relay with a certificate of its own
// (CA-signed, say) serves it to agents that check the chain, and its
// identity certificate to agents that pin its ID, which say so with
// [relayproto.ALPNPinned]; both negotiate HTTP/1.1.
func TestCertificateForPinnedAgents(t *testing.T) {
	id, err := identity.Generate()
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	own := &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
	srv, err := New(Config{Identity: id, GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return own, nil }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })

	for _, tc := range []struct {
		name   string
		protos []string
		pinned bool
	}{
		{"chain", []string{"http/1.1"}, false},
		{"pinned", []string{"http/1.1", relayproto.ALPNPinned}, true},
		{"pinned, signal first", []string{relayproto.ALPNPinned, "http/1.1"}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, b := net.Pipe()
			done := make(chan error, 1)
			go func() {
				s := tls.Server(b, srv.TLSConfig())
				done <- s.Handshake()
				s.Close()
			}()
			c := tls.Client(a, &tls.Config{MinVersion: tls.VersionTLS13, InsecureSkipVerify: true, NextProtos: tc.protos})
			defer c.Close()
			if err := c.Handshake(); err != nil {
				t.Fatal(err)
			}
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			cs := c.ConnectionState()
			if cs.NegotiatedProtocol != "http/1.1" {
				t.Errorf("negotiated %q, want http/1.1", cs.NegotiatedProtocol)
			}
			pub, isIdentity := cs.PeerCertificates[0].PublicKey.(ed25519.PublicKey)
			isIdentity = isIdentity && identity.IDOf(pub) == id.ID()
			if isIdentity != tc.pinned {
				t.Errorf("served the identity certificate: %v, want %v", isIdentity, tc.pinned)
			}
		})
	}
}
