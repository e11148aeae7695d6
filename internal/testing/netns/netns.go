//go:build linux

// Package netns builds small networks for tests out of Linux network
// namespaces, veth pairs, iptables rules and lossy links, and runs code
// inside them. It drives the ip and iptables commands, so tests need root;
// [New] skips the test otherwise.
//
// Sockets keep the namespace they were created in: [Net.Do] runs a
// function (which opens sockets) on an OS thread moved into a namespace,
// and the sockets it returns work from any goroutine.
package netns

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

// A Net is a set of namespaces a test made; they are deleted when the test
// ends, and everything in them (veths, routes, rules) with them.
type Net struct {
	t      testing.TB
	prefix string
	mu     sync.Mutex
	names  []string // guarded by mu
}

// New returns an empty Net for t. It skips t unless the process is root,
// and fails it if the ip or iptables command is missing (.ci/run installs
// them).
func New(t testing.TB) *Net {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipped: building network namespaces needs root (CI runs these tests as root)")
	}
	for _, cmd := range []string{"ip", "iptables"} {
		if _, err := exec.LookPath(cmd); err != nil {
			t.Fatalf("%s not found: install iproute2 and iptables (.ci/run does)", cmd)
		}
	}
	var b [3]byte
	rand.Read(b[:])
	n := &Net{t: t, prefix: "bw" + hex.EncodeToString(b[:])}
	t.Cleanup(n.cleanup)
	return n
}

// Name returns the system name of the namespace the test calls name.
func (n *Net) Name(name string) string { return n.prefix + name }

// Add creates namespaces with loopback up.
func (n *Net) Add(names ...string) {
	n.t.Helper()
	for _, name := range names {
		n.Run("ip", "netns", "add", n.Name(name))
		n.mu.Lock()
		n.names = append(n.names, name)
		n.mu.Unlock()
		n.In(name, "ip", "link", "set", "lo", "up")
	}
}

// Link connects namespaces a and b with a veth pair: a's end named
// ifA with address addrA (CIDR), b's likewise. An empty address leaves
// that end without one.
func (n *Net) Link(a, ifA, addrA, b, ifB, addrB string) {
	n.t.Helper()
	tmpA, tmpB := n.prefix+ifA, n.prefix+ifB
	tmpA, tmpB = tmpA[:min(len(tmpA), 15)], tmpB[:min(len(tmpB), 15)]
	n.Run("ip", "link", "add", tmpA, "type", "veth", "peer", "name", tmpB)
	for _, end := range []struct{ ns, tmp, name, addr string }{{a, tmpA, ifA, addrA}, {b, tmpB, ifB, addrB}} {
		n.Run("ip", "link", "set", end.tmp, "netns", n.Name(end.ns))
		n.In(end.ns, "ip", "link", "set", end.tmp, "name", end.name)
		if end.addr != "" {
			n.In(end.ns, "ip", "addr", "add", end.addr, "dev", end.name)
		}
		n.In(end.ns, "ip", "link", "set", end.name, "up")
	}
}

// Run runs a command in the test's own namespace and fails the test if it
// fails.
func (n *Net) Run(args ...string) {
	n.t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		n.t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// In runs a command inside namespace ns and fails the test if it fails.
func (n *Net) In(ns string, args ...string) {
	n.t.Helper()
	n.Run(append([]string{"ip", "netns", "exec", n.Name(ns)}, args...)...)
}

// Dialer returns a dial function (as net.Dialer's DialContext) whose
// connections are opened inside namespace ns.
func (n *Net) Dialer(ns string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := n.Do(ns, func() error {
			var err error
			c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
}

// Do runs f on an OS thread inside namespace ns. Sockets f opens belong to
// ns for their whole life.
func (n *Net) Do(ns string, f func() error) error {
	errc := make(chan error, 1)
	// A goroutine of its own: if the thread cannot be moved back, it is
	// left locked, and the runtime ends it with the goroutine.
	go func() {
		runtime.LockOSThread()
		self, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
		if err != nil {
			errc <- err
			return
		}
		defer self.Close()
		target, err := os.Open("/run/netns/" + n.Name(ns))
		if err != nil {
			errc <- err
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("setns %s: %w", ns, err)
			return
		}
		err = f()
		if unix.Setns(int(self.Fd()), unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	return <-errc
}

func (n *Net) cleanup() {
	n.mu.Lock()
	names := n.names
	n.names = nil
	n.mu.Unlock()
	for _, name := range names {
		if out, err := exec.Command("ip", "netns", "del", n.Name(name)).CombinedOutput(); err != nil {
			n.t.Errorf("ip netns del %s: %v\n%s", n.Name(name), err, out)
		}
	}
}
