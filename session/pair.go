package session

import (
	"context"
	"fmt"
	"time"
)

// Pair proves an invite's secret to the device over a new stream, inside
// the session, and returns the device's answer: on success the reply's
// Detail names the role granted and Allowed lists its services. invite is
// the invite's relay token (pairing.Secret.RelayToken): the device counts
// a wrong secret against that invite alone. A refusal is a
// [*RefusedError] (CodeNotAuthorized for a wrong, used or expired invite;
// CodeRateLimited after too many failures; CodeUnavailable when the device
// could not store the pairing).
func (s *Session) Pair(ctx context.Context, invite [32]byte, secret []byte) (Reply, error) {
	str, err := s.conn.OpenStreamSync(ctx)
	if err != nil {
		return Reply{}, s.streamError(fmt.Errorf("pair: %w", err))
	}
	defer str.Close()
	if d, ok := ctx.Deadline(); ok {
		str.SetDeadline(d)
	} else {
		str.SetDeadline(time.Now().Add(headerTimeout))
	}
	if _, err := str.Write(AppendRequest(nil, Request{Kind: KindPair, Secret: secret, Invite: invite})); err != nil {
		return Reply{}, s.streamError(fmt.Errorf("pair: %w", err))
	}
	rep, err := ReadReply(str)
	if err != nil {
		return Reply{}, s.streamError(fmt.Errorf("pair: no answer from the device: %w", err))
	}
	if rep.Code != CodeOK {
		return Reply{}, &RefusedError{Device: s.peer, Reply: rep, pairing: true}
	}
	return rep, nil
}

// Answer writes rep and closes the stream; nothing the client sent after
// its request is read.
func (in *Incoming) Answer(rep Reply) error {
	in.str.CancelRead(streamClosed)
	_, err := in.str.Write(AppendReply(nil, rep))
	in.str.Close()
	return err
}
