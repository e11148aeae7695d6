package session

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
)

// The stream header. Every stream a client opens starts with a request;
// the device answers with a reply before any service byte flows.
//
//	request: version u8 (=1), kind u8,
//	         kind 1 (tunnel): serviceLen u8, service [serviceLen]
//	         kind 2 (pair):   secretLen u8, secret [secretLen]
//	         kind 3 (control): 0 u8
//	         extLen u16, ext [extLen]: extensions, each
//	                  type u8, len u16, value [len]; unknown types skipped
//	reply:   code u8, detailLen u16, detail [detailLen],
//	         count u8, count × (nameLen u8, name [nameLen])  (services the
//	         client may use, sent with CodeUnknownService)
//	         after an ok reply to a pair request: the pair info
//	         ([PairInfo], pair.go)
//
// Extensions:
//
//	type 1 (invite), pair requests: the relay token of the invite whose
//	       secret the request carries [32]. The device counts a wrong
//	       secret against that invite only, so that guesses at one invite
//	       never lock another (device/pair.go). The device refuses a
//	       pair request without it.
const (
	headerVersion = 1

	// maxSecretLen bounds a pairing request's secret.
	maxSecretLen = 64

	// MaxServiceLen is the longest service name.
	MaxServiceLen = 63
	// maxExtLen bounds a request's extension block.
	maxExtLen = 1024
	// extInvite is the extension naming a pair request's invite.
	extInvite = 1
	// MaxDetailLen is the longest detail text of a reply.
	MaxDetailLen = 1024
	// maxServices bounds the service list of a reply.
	maxServices = 255
)

// Errors of the header codec, matched with [errors.Is].
var (
	ErrBadHeader   = errors.New("session: malformed tunnel header")
	ErrBadService  = errors.New("invalid service name")
	ErrHeaderShort = errors.New("session: tunnel header truncated")
)

// ValidService checks a service name: 1 to 63 characters of a-z, 0-9, '-',
// '_' and '.', starting with a letter or digit.
func ValidService(name string) error {
	if len(name) == 0 || len(name) > MaxServiceLen {
		return fmt.Errorf("%w %q: want 1 to %d characters", ErrBadService, name, MaxServiceLen)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		ok := c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || i > 0 && (c == '-' || c == '_' || c == '.')
		if !ok {
			return fmt.Errorf("%w %q: use lowercase letters, digits, '-', '_' and '.'", ErrBadService, name)
		}
	}
	return nil
}

// Kind says what a stream is for.
type Kind byte

// Stream kinds.
const (
	KindTunnel  Kind = 1 // a tunnel to Request.Service
	KindPair    Kind = 2 // pairing with an invite's secret, Request.Secret
	KindControl Kind = 3 // the session's control stream (control.go)
)

// Request is the header a client sends on a new stream.
type Request struct {
	Kind    Kind
	Service string // KindTunnel
	Secret  []byte // KindPair
	// Invite, for KindPair, is the relay token of the invite the secret is
	// for (pairing.Secret.RelayToken); zero if the request names none.
	Invite [32]byte
}

// AppendRequest appends the encoding of r.
func AppendRequest(b []byte, r Request) []byte {
	field := r.Service
	if r.Kind == KindPair {
		field = string(r.Secret)
	}
	b = append(b, headerVersion, byte(r.Kind), byte(len(field)))
	b = append(b, field...)
	if r.Kind != KindPair || r.Invite == [32]byte{} {
		return append(b, 0, 0) // no extensions
	}
	b = binary.BigEndian.AppendUint16(b, uint16(3+len(r.Invite)))
	b = append(b, extInvite)
	b = binary.BigEndian.AppendUint16(b, uint16(len(r.Invite)))
	return append(b, r.Invite[:]...)
}

// ParseRequest parses a whole encoded request.
func ParseRequest(b []byte) (Request, error) {
	sr := &sliceReader{b: b}
	req, err := ReadRequest(sr)
	if err == nil && len(sr.b) > 0 {
		return Request{}, fmt.Errorf("%w: %d trailing bytes", ErrBadHeader, len(sr.b))
	}
	return req, err
}

// ReadRequest reads one request from r, never past its end.
func ReadRequest(r io.Reader) (Request, error) {
	var fixed [3]byte
	if err := readFull(r, fixed[:]); err != nil {
		return Request{}, err
	}
	if fixed[0] != headerVersion {
		return Request{}, fmt.Errorf("%w: version %d", ErrBadHeader, fixed[0])
	}
	kind, n := Kind(fixed[1]), int(fixed[2])
	switch {
	case kind == KindTunnel && n > MaxServiceLen:
		return Request{}, fmt.Errorf("%w: service name of %d bytes", ErrBadHeader, n)
	case kind == KindPair && n > maxSecretLen:
		return Request{}, fmt.Errorf("%w: secret of %d bytes", ErrBadHeader, n)
	case kind == KindControl && n != 0:
		return Request{}, fmt.Errorf("%w: control request with a field of %d bytes", ErrBadHeader, n)
	case kind != KindTunnel && kind != KindPair && kind != KindControl:
		return Request{}, fmt.Errorf("%w: stream kind %d", ErrBadHeader, kind)
	}
	name := make([]byte, n+2)
	if err := readFull(r, name); err != nil {
		return Request{}, err
	}
	extLen := int(binary.BigEndian.Uint16(name[n:]))
	if extLen > maxExtLen {
		return Request{}, fmt.Errorf("%w: extensions of %d bytes", ErrBadHeader, extLen)
	}
	ext := make([]byte, extLen)
	if err := readFull(r, ext); err != nil {
		return Request{}, err
	}
	req := Request{Kind: kind}
	switch kind {
	case KindPair:
		req.Secret = name[:n:n]
	case KindTunnel:
		req.Service = string(name[:n])
		if err := ValidService(req.Service); err != nil {
			return Request{}, fmt.Errorf("%w: %w", ErrBadHeader, err)
		}
	}
	if err := parseExtensions(ext, &req); err != nil {
		return Request{}, err
	}
	return req, nil
}

// parseExtensions checks a request's extension block and fills in the
// fields of req that it carries.
func parseExtensions(ext []byte, req *Request) error {
	seen := false
	for len(ext) > 0 {
		if len(ext) < 3 {
			return fmt.Errorf("%w: extension header truncated", ErrBadHeader)
		}
		typ, n := ext[0], int(binary.BigEndian.Uint16(ext[1:3]))
		if len(ext) < 3+n {
			return fmt.Errorf("%w: extension %d of %d bytes, %d left", ErrBadHeader, typ, n, len(ext)-3)
		}
		value := ext[3 : 3+n]
		ext = ext[3+n:]
		if typ != extInvite || req.Kind != KindPair {
			continue // unknown here: skipped
		}
		if n != len(req.Invite) || seen {
			return fmt.Errorf("%w: invite extension of %d bytes, or given twice", ErrBadHeader, n)
		}
		seen = true
		req.Invite = [32]byte(value)
	}
	return nil
}

// Code is the device's answer to a tunnel request.
type Code byte

// Reply codes.
const (
	CodeOK                 Code = 0
	CodeNotAuthorized      Code = 1 // the client may not open this service
	CodeUnknownService     Code = 2 // the device has no such service (for this client)
	CodeServiceUnreachable Code = 3 // the device could not dial the service
	CodeRateLimited        Code = 4 // too many tunnels too fast
	CodeBadRequest         Code = 5 // the request did not parse
	// CodeUnavailable: the device cannot do it now, through no fault of the
	// request (its storage is full or read-only, so it cannot store a
	// pairing). Sent to pairing requests; the same request may succeed
	// later.
	CodeUnavailable Code = 6
)

func (c Code) String() string {
	switch c {
	case CodeOK:
		return "ok"
	case CodeNotAuthorized:
		return "not authorized"
	case CodeUnknownService:
		return "unknown service"
	case CodeServiceUnreachable:
		return "service unreachable"
	case CodeRateLimited:
		return "rate limited"
	case CodeBadRequest:
		return "bad request"
	case CodeUnavailable:
		return "unavailable"
	}
	return fmt.Sprintf("code %d", byte(c))
}

// Reply is the device's answer to a [Request].
type Reply struct {
	Code    Code
	Detail  string   // human-readable; for CodeServiceUnreachable, the dial error
	Allowed []string // with CodeUnknownService: services the client may use
}

// AppendReply appends the encoding of r. Over-long fields are truncated.
func AppendReply(b []byte, r Reply) []byte {
	d := r.Detail
	if len(d) > MaxDetailLen {
		d = d[:MaxDetailLen]
	}
	b = append(b, byte(r.Code))
	b = binary.BigEndian.AppendUint16(b, uint16(len(d)))
	b = append(b, d...)
	names := r.Allowed
	if len(names) > maxServices {
		names = names[:maxServices]
	}
	b = append(b, byte(len(names)))
	for _, n := range names {
		if len(n) > MaxServiceLen {
			n = n[:MaxServiceLen]
		}
		b = append(b, byte(len(n)))
		b = append(b, n...)
	}
	return b
}

// ParseReply parses a whole encoded reply.
func ParseReply(b []byte) (Reply, error) {
	sr := &sliceReader{b: b}
	r, err := ReadReply(sr)
	if err == nil && len(sr.b) > 0 {
		return Reply{}, fmt.Errorf("%w: %d trailing bytes", ErrBadHeader, len(sr.b))
	}
	return r, err
}

// ReadReply reads one reply from r, never past its end.
func ReadReply(r io.Reader) (Reply, error) {
	var fixed [3]byte
	if err := readFull(r, fixed[:]); err != nil {
		return Reply{}, err
	}
	n := int(binary.BigEndian.Uint16(fixed[1:]))
	if n > MaxDetailLen {
		return Reply{}, fmt.Errorf("%w: detail of %d bytes", ErrBadHeader, n)
	}
	detail := make([]byte, n+1)
	if err := readFull(r, detail); err != nil {
		return Reply{}, err
	}
	rep := Reply{Code: Code(fixed[0]), Detail: string(detail[:n])}
	count := int(detail[n])
	var l [1]byte
	name := make([]byte, MaxServiceLen)
	for range count {
		if err := readFull(r, l[:]); err != nil {
			return Reply{}, err
		}
		if int(l[0]) > MaxServiceLen {
			return Reply{}, fmt.Errorf("%w: service name of %d bytes", ErrBadHeader, l[0])
		}
		if err := readFull(r, name[:l[0]]); err != nil {
			return Reply{}, err
		}
		rep.Allowed = append(rep.Allowed, string(name[:l[0]]))
	}
	return rep, nil
}

func readFull(r io.Reader, b []byte) error {
	_, err := io.ReadFull(r, b)
	return truncated(err)
}

func truncated(err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return ErrHeaderShort
	}
	return err
}

type sliceReader struct{ b []byte }

func (s *sliceReader) Read(p []byte) (int, error) {
	if len(s.b) == 0 {
		return 0, io.EOF
	}
	n := copy(p, s.b)
	s.b = s.b[n:]
	return n, nil
}

// quoteList formats service names for an error message.
func quoteList(names []string) string {
	if len(names) == 0 {
		return "none"
	}
	return strings.Join(names, ", ")
}
