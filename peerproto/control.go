package peerproto

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// The control stream is one stream of the session, which the client opens
// (its stream header names kind 3, control) once the session is up. Both
// sides then send messages on it, in either direction:
//
//	message = type u8, len u16, payload [len]      (len ≤ MaxControlLen)
//
// A receiver checks len before it reads the payload and ends the stream
// if it is too large, or not what a known type carries. It skips messages
// of unknown types.

// ControlType says what a control message is.
type ControlType byte

// Control message types. Each comment gives the payload layout; integers
// are big-endian.
const (
	// ControlPath: signal [len]. A signalling message of the path layer
	// ([ParseSignal]), delivered whole and in order to the peer's.
	ControlPath ControlType = 1
	// ControlPing: id u64. The receiver answers with a pong.
	ControlPing ControlType = 2
	// ControlPong: id u64, the ping's.
	ControlPong ControlType = 3
)

func (t ControlType) String() string {
	switch t {
	case ControlPath:
		return "path"
	case ControlPing:
		return "ping"
	case ControlPong:
		return "pong"
	}
	return fmt.Sprintf("control-%d", byte(t))
}

// Limits of control messages.
const (
	// ControlHeaderLen is the type and length before every payload.
	ControlHeaderLen = 3
	// MaxControlLen bounds the payload of any control message, known or
	// not.
	MaxControlLen = 1024
	// pingLen is the payload of a ping or a pong.
	pingLen = 8
)

// A ControlMessage is a parsed control message: a [PathMessage], [Ping] or
// [Pong].
type ControlMessage interface {
	isControl()
}

// A PathMessage carries a signalling message of the path layer.
type PathMessage struct {
	// Signal is the signalling message, at most MaxControlLen bytes: a
	// longer one cannot be sent.
	Signal []byte
}

// A Ping asks the peer for a [Pong] with the same ID.
type Ping struct {
	ID uint64
}

// A Pong answers a [Ping].
type Pong struct {
	ID uint64
}

func (PathMessage) isControl() {}
func (Ping) isControl()        {}
func (Pong) isControl()        {}

// appendControl appends a control message of type t with payload p.
func appendControl(b []byte, t ControlType, p []byte) []byte {
	b = binary.BigEndian.AppendUint16(append(b, byte(t)), uint16(len(p)))
	return append(b, p...)
}

// AppendPathMessage appends a path message. Its signal must not be longer
// than MaxControlLen: the peer would end the stream.
func AppendPathMessage(b []byte, m PathMessage) []byte {
	return appendControl(b, ControlPath, m.Signal)
}

// AppendPing appends a ping.
func AppendPing(b []byte, m Ping) []byte {
	return binary.BigEndian.AppendUint64(append(b, byte(ControlPing), 0, pingLen), m.ID)
}

// AppendPong appends a pong.
func AppendPong(b []byte, m Pong) []byte {
	return binary.BigEndian.AppendUint64(append(b, byte(ControlPong), 0, pingLen), m.ID)
}

// ParseControlHeader parses the header of a control message and checks
// its payload length: at most MaxControlLen, and what a ping or a pong
// carries. The length is checked before the payload is read.
func ParseControlHeader(b []byte) (ControlType, int, error) {
	if len(b) < ControlHeaderLen {
		return 0, 0, fmt.Errorf("%w: control header of %d bytes", ErrTruncated, len(b))
	}
	t, n := ControlType(b[0]), int(binary.BigEndian.Uint16(b[1:3]))
	switch {
	case n > MaxControlLen:
		return t, n, fmt.Errorf("%w: control message of %d bytes (limit %d)", ErrMalformed, n, MaxControlLen)
	case (t == ControlPing || t == ControlPong) && n != pingLen:
		return t, n, fmt.Errorf("%w: %s of %d bytes", ErrMalformed, t, n)
	}
	return t, n, nil
}

// parseControlPayload returns the message of type t with payload p, whose
// length ParseControlHeader has checked.
func parseControlPayload(t ControlType, p []byte) (ControlMessage, error) {
	switch t {
	case ControlPath:
		return PathMessage{Signal: p}, nil
	case ControlPing:
		return Ping{ID: binary.BigEndian.Uint64(p)}, nil
	case ControlPong:
		return Pong{ID: binary.BigEndian.Uint64(p)}, nil
	}
	return nil, fmt.Errorf("%w: control message type %d", ErrUnknownType, byte(t))
}

// ParseControl parses one whole control message, and nothing after it. A
// well-framed message of a type this package does not know fails with
// [ErrUnknownType]. The signal of a [PathMessage] aliases b.
func ParseControl(b []byte) (ControlMessage, error) {
	t, n, err := ParseControlHeader(b)
	if err != nil {
		return nil, err
	}
	switch p := b[ControlHeaderLen:]; {
	case len(p) < n:
		return nil, fmt.Errorf("%w: %s of %d bytes, %d present", ErrTruncated, t, n, len(p))
	case len(p) > n:
		return nil, fmt.Errorf("%w: %d bytes after the %s", ErrMalformed, len(p)-n, t)
	}
	return parseControlPayload(t, b[ControlHeaderLen:])
}

// ReadControl reads one control message from r, never past its end, with
// its payload in buf (grown to MaxControlLen bytes if smaller): the signal
// of a [PathMessage] aliases buf until the next read. A message of a type
// this package does not know is read whole and fails with
// [ErrUnknownType]; the next one can be read. Errors of r come back as
// they are (io.EOF if r ends between messages, io.ErrUnexpectedEOF inside
// one); a header [ParseControlHeader] refuses fails with [ErrMalformed],
// after which the stream cannot be read further.
func ReadControl(r io.Reader, buf []byte) (ControlMessage, error) {
	var hdr [ControlHeaderLen]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, err
	}
	t, n, err := ParseControlHeader(hdr[:])
	if err != nil {
		return nil, err
	}
	if len(buf) < n {
		buf = make([]byte, MaxControlLen)
	}
	if _, err := io.ReadFull(r, buf[:n]); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	return parseControlPayload(t, buf[:n])
}
