package session

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"time"
)

// Pair proves an invite's secret to the device over a new stream, inside
// the session, and returns the device's answer: on success the reply's
// Detail names the role granted and Allowed lists its services, and the
// [PairInfo] says under which name, and what changed. invite is the
// invite's relay token (pairing.Secret.RelayToken): the device counts a
// wrong secret against that invite alone. A refusal is a [*RefusedError]
// (CodeNotAuthorized for a wrong, used or expired invite; CodeRateLimited
// after too many failures; CodeUnavailable when the device could not store
// the pairing).
func (s *Session) Pair(ctx context.Context, invite [32]byte, secret []byte) (Reply, PairInfo, error) {
	str, err := s.conn.OpenStreamSync(ctx)
	if err != nil {
		return Reply{}, PairInfo{}, s.streamError(fmt.Errorf("pair: %w", err))
	}
	defer str.Close()
	if d, ok := ctx.Deadline(); ok {
		str.SetDeadline(d)
	} else {
		str.SetDeadline(time.Now().Add(headerTimeout))
	}
	if _, err := str.Write(AppendRequest(nil, Request{Kind: KindPair, Secret: secret, Invite: invite})); err != nil {
		return Reply{}, PairInfo{}, s.streamError(fmt.Errorf("pair: %w", err))
	}
	rep, err := ReadReply(str)
	if err != nil {
		return Reply{}, PairInfo{}, s.streamError(fmt.Errorf("pair: no answer from the device: %w", err))
	}
	if rep.Code != CodeOK {
		return Reply{}, PairInfo{}, &RefusedError{Device: s.peer, Reply: rep, pairing: true}
	}
	// The device has paired this client: a PairInfo it garbled only
	// costs the client the news in it, not the pairing.
	info, _ := ReadPairInfo(str)
	return rep, info, nil
}

// Answer writes rep and closes the stream; nothing the client sent after
// its request is read.
func (in *Incoming) Answer(rep Reply) error {
	return in.answer(AppendReply(nil, rep))
}

// AnswerPair answers a pair request that succeeded: rep (CodeOK), then
// info, and closes the stream.
func (in *Incoming) AnswerPair(rep Reply, info PairInfo) error {
	return in.answer(AppendPairInfo(AppendReply(nil, rep), info))
}

func (in *Incoming) answer(b []byte) error {
	in.str.CancelRead(streamClosed)
	_, err := in.str.Write(b)
	in.str.Close()
	return err
}

// PairInfo is what a device tells a client it has just paired, after the
// ok reply to its pair request:
//
//	extLen u16, ext [extLen], ext as in a request: repeated
//	                (type u8, len u16, value [len]); unknown types skipped
//	type 1 (user):     the name the device knows the client by
//	type 2 (asked):    the name the invite asked for, sent when another
//	                   user had it and the device chose User instead
//	type 3 (was role): the client's role before this pairing, and
//	type 4 (was name): its name before, both sent when the client was
//	                   paired with the device already
//
// Each value follows the rule of service names ([ValidService]). An older
// device sends no block: its stream ends after the reply, and every field
// is "". An older client does not read the block.
type PairInfo struct {
	User    string
	Asked   string
	WasRole string
	WasName string
}

// The types of the pair info's entries.
const (
	pairUser    = 1
	pairAsked   = 2
	pairWasRole = 3
	pairWasName = 4
)

// fields returns the pair info's fields by entry type.
func (p *PairInfo) fields() [5]*string {
	return [5]*string{pairUser: &p.User, pairAsked: &p.Asked, pairWasRole: &p.WasRole, pairWasName: &p.WasName}
}

// AppendPairInfo appends the encoding of p; empty fields are left out.
// Values that are not valid names are left out too.
func AppendPairInfo(b []byte, p PairInfo) []byte {
	start := len(b)
	b = append(b, 0, 0)
	for typ, f := range p.fields() {
		if f == nil || ValidService(*f) != nil {
			continue
		}
		b = append(b, byte(typ))
		b = binary.BigEndian.AppendUint16(b, uint16(len(*f)))
		b = append(b, *f...)
	}
	binary.BigEndian.PutUint16(b[start:], uint16(len(b)-start-2))
	return b
}

// ParsePairInfo parses a whole encoded pair info; no bytes at all (an
// older device) is a zero PairInfo.
func ParsePairInfo(b []byte) (PairInfo, error) {
	sr := &sliceReader{b: b}
	p, err := ReadPairInfo(sr)
	if err == nil && len(sr.b) > 0 {
		return PairInfo{}, fmt.Errorf("%w: %d trailing bytes", ErrBadHeader, len(sr.b))
	}
	return p, err
}

// ReadPairInfo reads a pair info from r, never past its end. An r that
// ends at once (an older device closed the stream after its reply) gives
// a zero PairInfo and no error.
func ReadPairInfo(r io.Reader) (PairInfo, error) {
	var l [2]byte
	if n, err := io.ReadFull(r, l[:]); n == 0 && errors.Is(err, io.EOF) {
		return PairInfo{}, nil
	} else if err != nil {
		return PairInfo{}, truncated(err)
	}
	extLen := int(binary.BigEndian.Uint16(l[:]))
	if extLen > maxExtLen {
		return PairInfo{}, fmt.Errorf("%w: pair info of %d bytes", ErrBadHeader, extLen)
	}
	ext := make([]byte, extLen)
	if err := readFull(r, ext); err != nil {
		return PairInfo{}, err
	}
	var p PairInfo
	fields := p.fields()
	seen := make(map[byte]bool)
	for len(ext) > 0 {
		if len(ext) < 3 {
			return PairInfo{}, fmt.Errorf("%w: pair info entry truncated", ErrBadHeader)
		}
		typ, n := ext[0], int(binary.BigEndian.Uint16(ext[1:3]))
		if len(ext) < 3+n {
			return PairInfo{}, fmt.Errorf("%w: pair info entry %d of %d bytes, %d left", ErrBadHeader, typ, n, len(ext)-3)
		}
		value := string(ext[3 : 3+n])
		ext = ext[3+n:]
		if int(typ) >= len(fields) || fields[typ] == nil {
			continue // unknown: skipped
		}
		if seen[typ] {
			return PairInfo{}, fmt.Errorf("%w: pair info entry %d given twice", ErrBadHeader, typ)
		}
		if err := ValidService(value); err != nil {
			return PairInfo{}, fmt.Errorf("%w: pair info entry %d: %w", ErrBadHeader, typ, err)
		}
		seen[typ] = true
		*fields[typ] = value
	}
	return p, nil
}
