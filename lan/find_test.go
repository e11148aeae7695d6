package lan

import (
	"net"
	"net/netip"
	"testing"

	"github.com/miekg/dns"

	"github.com/burrow-tunnel/burrow/identity"
)

// answerFor builds the records a device answers with: SRV, TXT and A of
// the instance named by tag.
func answerFor(tag Tag, port uint16, txt []string, ips ...string) *dns.Msg {
	inst := tag.String() + "." + serviceName
	host := tag.String() + ".local."
	m := &dns.Msg{MsgHdr: dns.MsgHdr{Response: true}}
	m.Answer = append(m.Answer,
		&dns.SRV{Hdr: dns.RR_Header{Name: inst, Rrtype: dns.TypeSRV, Class: dns.ClassINET}, Port: port, Target: host},
		&dns.TXT{Hdr: dns.RR_Header{Name: inst, Rrtype: dns.TypeTXT, Class: dns.ClassINET}, Txt: txt})
	for _, ip := range ips {
		a := netip.MustParseAddr(ip)
		if a.Is4() {
			m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: host, Rrtype: dns.TypeA, Class: dns.ClassINET}, A: net.IP(a.AsSlice())})
		} else {
			m.Answer = append(m.Answer, &dns.AAAA{Hdr: dns.RR_Header{Name: host, Rrtype: dns.TypeAAAA, Class: dns.ClassINET}, AAAA: net.IP(a.AsSlice())})
		}
	}
	return m
}

// TestCollect: only answers carrying the tag of a known device in a
// window beside the client's, of version 1, are kept; a link-local
// address is kept only with the zone it was heard on.
func TestCollect(t *testing.T) {
	cam1, other := testID("cam1"), testID("other")
	const w = 500
	tags := make(map[Tag]match)
	for i, tag := range Candidates(cam1, w) {
		tags[tag] = match{device: cam1, window: w - 1 + int64(i)}
	}
	v1 := []string{"v=1"}
	tests := []struct {
		name  string
		msg   *dns.Msg
		zone  string
		want  []string // cam1's addresses; nil: not found
		wantW int64
	}{
		{"current window", answerFor(TagOf(cam1, w), 7, v1, "10.0.0.1"), "", []string{"10.0.0.1:7"}, w},
		{"window after", answerFor(TagOf(cam1, w+1), 7, v1, "10.0.0.1"), "", []string{"10.0.0.1:7"}, w + 1},
		{"window before", answerFor(TagOf(cam1, w-1), 7, v1, "10.0.0.1"), "", []string{"10.0.0.1:7"}, w - 1},
		{"two windows after", answerFor(TagOf(cam1, w+2), 7, v1, "10.0.0.1"), "", nil, 0},
		{"another device", answerFor(TagOf(other, w), 7, v1, "10.0.0.1"), "", nil, 0},
		{"another version", answerFor(TagOf(cam1, w), 7, []string{"v=2"}, "10.0.0.1"), "", nil, 0},
		{"no address", answerFor(TagOf(cam1, w), 7, v1), "", nil, 0},
		{"link-local, no zone", answerFor(TagOf(cam1, w), 7, v1, "fe80::1"), "", nil, 0},
		{"link-local with zone", answerFor(TagOf(cam1, w), 7, v1, "fe80::1", "fd00::1"), "eth1", []string{"[fe80::1%eth1]:7", "[fd00::1]:7"}, w},
		{"too many addresses", answerFor(TagOf(cam1, w), 7, v1, "10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5",
			"10.0.0.6", "10.0.0.7", "10.0.0.8", "10.0.0.9", "10.0.0.10"), "",
			[]string{"10.0.0.1:7", "10.0.0.2:7", "10.0.0.3:7", "10.0.0.4:7", "10.0.0.5:7", "10.0.0.6:7", "10.0.0.7:7", "10.0.0.8:7"}, w},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			found := make(map[identity.ID]*Found)
			collect(found, tags, answer{msg: tt.msg, zone: tt.zone})
			f, ok := found[cam1]
			if len(found) > 1 || ok != (tt.want != nil) {
				t.Fatalf("found %v, want cam1: %v", found, tt.want != nil)
			}
			if !ok {
				return
			}
			if f.Window != tt.wantW || len(f.Addrs) != len(tt.want) {
				t.Fatalf("found %+v, want window %d at %v", f, tt.wantW, tt.want)
			}
			for i, a := range tt.want {
				if f.Addrs[i] != netip.MustParseAddrPort(a) {
					t.Errorf("address %d: %v, want %s", i, f.Addrs[i], a)
				}
			}
		})
	}
}

func TestAnnounceConfig(t *testing.T) {
	if _, err := Announce(AnnounceConfig{Port: 1}); err == nil {
		t.Error("announced with no device ID")
	}
	if _, err := Announce(AnnounceConfig{Device: testID("a")}); err == nil {
		t.Error("announced with no port")
	}
	if _, err := Announce(AnnounceConfig{Device: testID("a"), Port: 1, Interface: "no-such-interface0"}); err == nil {
		t.Error("announced on an interface that does not exist")
	}
}
