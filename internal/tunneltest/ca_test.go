package tunneltest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/burrow-tunnel/burrow/client"
	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/paths"
	"github.com/burrow-tunnel/burrow/relay"
)

// testCA makes a certificate authority and a relay certificate it signed
// for 127.0.0.1, written as PEM files; it returns their paths and a pool
// holding the CA, which stands in for the system roots.
func testCA(t *testing.T) (certFile, keyFile string, roots *x509.CertPool) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
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
	ca, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "relay"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		KeyUsage:     x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	keyDER, _ := x509.MarshalPKCS8PrivateKey(key)
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600)
	roots = x509.NewCertPool()
	roots.AddCert(ca)
	return certFile, keyFile, roots
}

// TestCASignedRelay: a relay serving a CA-signed certificate is trusted by
// agents holding the root, with or without a pinned relay ID; the pinned ID
// is then proven by the relay's signed hello.
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
	attach := func(cfg paths.RelayConfig) error {
		c := NewClient(t, client.Config{Relay: cfg})
		defer c.Close()
		return c.WaitAttached(ctx)
	}
	if err := attach(paths.RelayConfig{Addr: r.Addr, RootCAs: roots}); err != nil {
		t.Fatalf("trusted CA, no pin: %v", err)
	}
	if err := attach(paths.RelayConfig{Addr: r.Addr, RootCAs: roots, ID: r.Identity.ID()}); err != nil {
		t.Fatalf("trusted CA, right pin: %v", err)
	}
	wrong := NewIdentity(t).ID()
	err = attach(paths.RelayConfig{Addr: r.Addr, RootCAs: roots, ID: wrong})
	var km *identity.KeyMismatchError
	if !errors.As(err, &km) || km.Expected != wrong || km.Got != r.Identity.ID() {
		t.Fatalf("trusted CA, wrong pin: err = %v, want a key mismatch naming the relay's ID", err)
	}
	// Without the root (the system roots do not hold this test CA).
	err = attach(paths.RelayConfig{Addr: r.Addr})
	var untrusted *paths.UntrustedRelayError
	if !errors.As(err, &untrusted) {
		t.Fatalf("untrusted CA: err = %v", err)
	}
}
