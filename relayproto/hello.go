package relayproto

import (
	"crypto/ed25519"
	"encoding/binary"
	"fmt"
)

// Signature contexts, prefixed to what each hello signs.
const (
	clientHelloContext = "burrow relay client hello\x00"
	serverHelloContext = "burrow relay server hello\x00"
)

// Role says what kind of agent is attaching.
type Role byte

// Roles.
const (
	RoleDevice Role = 1
	RoleClient Role = 2
)

func (r Role) String() string {
	switch r {
	case RoleDevice:
		return "device"
	case RoleClient:
		return "client"
	}
	return fmt.Sprintf("role-%d", byte(r))
}

// ClientHello is the agent's first frame.
type ClientHello struct {
	MinVersion, MaxVersion uint16
	Role                   Role
	// Instance tells apart processes sharing one key; it stays the same
	// across reconnects of one process.
	Instance  uint64
	PublicKey ed25519.PublicKey
	// Extensions are type-length-value fields that newer agents may send;
	// a relay skips the types it does not know. See [Extension].
	Extensions []Extension
}

// An Extension is an optional hello field: type u8, length u16, value.
type Extension struct {
	Type  byte
	Value []byte
}

func appendExtensions(b []byte, exts []Extension) []byte {
	lenAt := len(b)
	b = append(b, 0, 0)
	for _, e := range exts {
		b = append(b, e.Type)
		b = binary.BigEndian.AppendUint16(b, uint16(len(e.Value)))
		b = append(b, e.Value...)
	}
	binary.BigEndian.PutUint16(b[lenAt:], uint16(len(b)-lenAt-2))
	return b
}

func parseExtensions(r *reader) []Extension {
	er := reader{b: r.take(int(r.u16()))}
	var exts []Extension
	for r.err == nil && er.err == nil && len(er.b) > 0 {
		t := er.u8()
		v := er.take(int(er.u16()))
		if er.err == nil {
			exts = append(exts, Extension{Type: t, Value: v})
		}
	}
	if r.err == nil && er.err != nil {
		r.err = fmt.Errorf("%w: extension overruns its block", ErrMalformed)
	}
	return exts
}

// AppendClientHello appends the payload of a signed client hello. sign
// signs the bytes it is given with the agent's key.
func AppendClientHello(b []byte, h ClientHello, exporter []byte, sign func([]byte) []byte) []byte {
	start := len(b)
	b = binary.BigEndian.AppendUint16(b, h.MinVersion)
	b = binary.BigEndian.AppendUint16(b, h.MaxVersion)
	b = append(b, byte(h.Role))
	b = binary.BigEndian.AppendUint64(b, h.Instance)
	b = append(b, h.PublicKey...)
	b = appendExtensions(b, h.Extensions)
	return append(b, sign(signedBytes(clientHelloContext, exporter, b[start:]))...)
}

// ParseClientHello parses a client hello and verifies its signature over
// exporter. The key and extension values of the result alias p.
func ParseClientHello(p []byte, exporter []byte) (ClientHello, error) {
	r := reader{b: p}
	var h ClientHello
	h.MinVersion = r.u16()
	h.MaxVersion = r.u16()
	h.Role = Role(r.u8())
	h.Instance = r.u64()
	h.PublicKey = ed25519.PublicKey(r.take(ed25519.PublicKeySize))
	h.Extensions = parseExtensions(&r)
	signed := p[:len(p)-len(r.b)]
	sig := r.take(ed25519.SignatureSize)
	if err := r.done(); err != nil {
		return ClientHello{}, err
	}
	if h.MinVersion > h.MaxVersion || h.MinVersion == 0 {
		return ClientHello{}, fmt.Errorf("%w: version range %d..%d", ErrMalformed, h.MinVersion, h.MaxVersion)
	}
	if !ed25519.Verify(h.PublicKey, signedBytes(clientHelloContext, exporter, signed), sig) {
		return ClientHello{}, ErrBadSignature
	}
	return h, nil
}

// ServerHello is the relay's answer to a valid client hello.
type ServerHello struct {
	Version uint16
	// KeepAlive is how often the agent must send a ping.
	KeepAliveMillis uint32
	// PublicKey is the relay's identity key, proven by the signature even
	// when the TLS certificate is a CA-signed one.
	PublicKey ed25519.PublicKey
	// ObservedAddr is the agent's address as the relay sees it ("ip:port").
	ObservedAddr string
	Extensions   []Extension
}

// AppendServerHello appends the payload of a signed server hello.
func AppendServerHello(b []byte, h ServerHello, exporter []byte, sign func([]byte) []byte) []byte {
	start := len(b)
	b = binary.BigEndian.AppendUint16(b, h.Version)
	b = binary.BigEndian.AppendUint32(b, h.KeepAliveMillis)
	b = append(b, h.PublicKey...)
	addr := h.ObservedAddr
	if len(addr) > 255 {
		addr = ""
	}
	b = append(b, byte(len(addr)))
	b = append(b, addr...)
	b = appendExtensions(b, h.Extensions)
	return append(b, sign(signedBytes(serverHelloContext, exporter, b[start:]))...)
}

// ParseServerHello parses a server hello and verifies its signature over
// exporter. The key and extension values of the result alias p.
func ParseServerHello(p []byte, exporter []byte) (ServerHello, error) {
	r := reader{b: p}
	var h ServerHello
	h.Version = r.u16()
	h.KeepAliveMillis = r.u32()
	h.PublicKey = ed25519.PublicKey(r.take(ed25519.PublicKeySize))
	h.ObservedAddr = string(r.take(int(r.u8())))
	h.Extensions = parseExtensions(&r)
	signed := p[:len(p)-len(r.b)]
	sig := r.take(ed25519.SignatureSize)
	if err := r.done(); err != nil {
		return ServerHello{}, err
	}
	if !ed25519.Verify(h.PublicKey, signedBytes(serverHelloContext, exporter, signed), sig) {
		return ServerHello{}, ErrBadSignature
	}
	return h, nil
}

func signedBytes(context string, exporter, payload []byte) []byte {
	m := make([]byte, 0, len(context)+len(exporter)+len(payload))
	return append(append(append(m, context...), exporter...), payload...)
}

// Hello extension types.
const (
	// ExtEnrollToken (client hello, devices): an enrollment token, which a
	// relay that does not know the device yet may accept to enroll it.
	ExtEnrollToken byte = 1
	// ExtUDPBinding (server hello): the relay's UDP port u16 and this
	// session's binding token [16]; see [AppendBindingRequest].
	ExtUDPBinding byte = 2
	// ExtUDPRelay (server hello, with ExtUDPBinding): the relay forwards
	// datagrams on that UDP port, and this is the agent's channel there;
	// see [UDPRelay] and [AppendUDPData].
	ExtUDPRelay byte = 3
)

// UDPBinding is the value of a server hello's ExtUDPBinding.
type UDPBinding struct {
	Port  uint16
	Token [16]byte
}

// AppendUDPBinding appends the extension value of b.
func AppendUDPBinding(dst []byte, b UDPBinding) []byte {
	return append(binary.BigEndian.AppendUint16(dst, b.Port), b.Token[:]...)
}

// ParseUDPBinding parses the extension value of a UDP binding.
func ParseUDPBinding(p []byte) (UDPBinding, error) {
	r := reader{b: p}
	b := UDPBinding{Port: r.u16()}
	copy(b.Token[:], r.take(16))
	return b, r.done()
}
