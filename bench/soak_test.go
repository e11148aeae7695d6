package main

import (
	"maps"
	"slices"
	"testing"
)

func TestParseGoroutines(t *testing.T) {
	const profile = "goroutine profile: total 8\n" +
		"2 @ 0x48ea4e 0x4500f7\n" +
		"#\t0x48dc24\tinternal/poll.runtime_pollWait+0x84\t\t\t\t\truntime/netpoll.go:351\n" +
		"#\t0x4fde66\tinternal/poll.(*pollDesc).wait+0x26\t\t\t\t\tinternal/poll/fd_poll_runtime.go:84\n" +
		"#\t0x6629a6\tgithub.com/burrow-tunnel/burrow/relay.(*session).readLoop+0x1\t\trelay/session.go:1\n" +
		"#\t0x6629a7\tgithub.com/burrow-tunnel/burrow/relay.(*session).run+0x1\t\trelay/session.go:2\n" +
		"#\t0x6629a8\tsync.(*WaitGroup).Go.func1+0x1\t\tsync/waitgroup.go:3\n" +
		"\n" +
		"1 @ 0x48ea4e\n" +
		"#\t0x6629a5\truntime/pprof.writeRuntimeProfile+0xb4\t\truntime/pprof/pprof.go:796\n" +
		"#\t0x6629a5\tnet/http/pprof.handler.ServeHTTP+0xb4\t\tnet/http/pprof/pprof.go:1\n" +
		"#\t0x6629a5\tnet/http.(*conn).serve+0xb4\t\tnet/http/server.go:1\n" +
		"\n" +
		"1 @ 0x48ea4e\n" +
		"#\t0x6629a5\tnet/http.(*connReader).backgroundRead+0xb4\t\tnet/http/server.go:2\n" +
		"\n" +
		"2 @ 0x48ea4e\n" +
		"#\t0x6629a5\tinternal/poll.runtime_pollWait+0x84\t\truntime/netpoll.go:351\n" +
		"#\t0x6629a5\tnet/http.(*Server).Serve+0xb4\t\tnet/http/server.go:3\n" +
		"# labels: {\"a\":\"b\"}\n" +
		"\n" +
		"1 @ 0x4963c1\n" +
		"\n" +
		"1 @ 0x48ea4e\n" +
		"#\t0x6629a5\truntime.selectgo+0x1\t\truntime/select.go:1\n" +
		"#\t0x6629a5\tgithub.com/burrow-tunnel/burrow/relay.(*writers).loop+0x1\t\trelay/queue.go:1\n" +
		"\n"
	n, kinds, err := parseGoroutines(profile)
	if err != nil {
		t.Fatal(err)
	}
	// The profile's own two goroutines are left out; the transient ones
	// (no frames, the relay's writer) from the count only.
	want := map[string]int{
		"github.com/burrow-tunnel/burrow/relay.(*session).run":  2,
		"net/http.(*Server).Serve":                              2,
		"(no frames: starting or ending)":                       1,
		"github.com/burrow-tunnel/burrow/relay.(*writers).loop": 1,
	}
	if n != 4 || !maps.Equal(kinds, want) {
		t.Fatalf("got %d, %v; want 4, %v", n, kinds, want)
	}
	for _, bad := range []string{"", "goroutine profile: total x\n", "heap profile: 1\n"} {
		if _, _, err := parseGoroutines(bad); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}

func TestKindChanges(t *testing.T) {
	got := kindChanges(map[string]int{"a": 1, "b": 2, "c": 1}, map[string]int{"a": 1, "b": 3, "d": 1})
	want := []string{"0 → 1  d", "1 → 0  c", "2 → 3  b"}
	if !slices.Equal(got, want) {
		t.Fatalf("got %q, want %q", got, want)
	}
}
