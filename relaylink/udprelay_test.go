package relaylink

import (
	"testing"

	"github.com/burrow-tunnel/burrow/relayproto"
)

// TestUDPRelayExtension: a Link offers the UDP relay path only when the
// server hello carries a valid extension 3 beside the UDP binding of
// extension 2, whose port the datagrams go to.
func TestUDPRelayExtension(t *testing.T) {
	binding := relayproto.Extension{Type: relayproto.ExtUDPBinding,
		Value: relayproto.AppendUDPBinding(nil, relayproto.UDPBinding{Port: 3478, Token: [16]byte{1}})}
	relay := func(ch uint32) relayproto.Extension {
		return relayproto.Extension{Type: relayproto.ExtUDPRelay, Value: relayproto.AppendUDPRelay(nil, relayproto.UDPRelay{Channel: ch})}
	}
	for _, tc := range []struct {
		name string
		exts []relayproto.Extension
		want uint32 // 0: not offered
	}{
		{"none", nil, 0},
		{"binding only", []relayproto.Extension{binding}, 0},
		{"relay only", []relayproto.Extension{relay(5)}, 0},
		{"both", []relayproto.Extension{relay(5), binding}, 5},
		{"channel 0", []relayproto.Extension{binding, relay(0)}, 0},
		{"truncated", []relayproto.Extension{binding, {Type: relayproto.ExtUDPRelay, Value: []byte{0, 0, 1}}}, 0},
	} {
		var l Link
		l.takeExtensions(tc.exts)
		r, ok := l.UDPRelay()
		if ok != (tc.want != 0) || r.Channel != tc.want {
			t.Errorf("%s: UDPRelay() = %v, %v; want channel %d", tc.name, r, ok, tc.want)
		}
	}
}
