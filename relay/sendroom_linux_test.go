package relay

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"syscall"
	"testing"
)

// TestSendRoom: while sendRoom says a socket has room for n bytes, n bytes
// go out in one write that does not wait (a non-blocking write takes them
// all); once the peer stops reading, it says so before the send buffer is
// full.
func TestSendRoom(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	peer := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(peer)
			return
		}
		peer <- c // and never read
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if p := <-peer; p != nil {
		defer p.Close()
	}
	check := newRoomCheck(tls.Client(c, &tls.Config{}))
	if check == nil {
		t.Skip("the system sets a TCP_NOTSENT_LOWAT limit: the relay never writes on its read loops")
	}
	if newRoomCheck(c) != nil {
		t.Fatal("a room check of a connection without TLS, want none")
	}
	rc, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	const n = 16 << 10
	b := make([]byte, n)
	written := 0
	for check.room(n) {
		var wn int
		var werr error
		rc.Write(func(s uintptr) bool {
			wn, werr = syscall.Write(int(s), b)
			return true // once, without waiting
		})
		if errors.Is(werr, syscall.EAGAIN) || wn != n {
			t.Fatalf("after %d bytes the room check said there was room, but a write took %d of %d bytes (%v)", written, wn, n, werr)
		}
		written += n
		if written > 1<<30 {
			t.Fatal("sendRoom never said the send buffer of a socket nobody reads was full")
		}
	}
	if written == 0 {
		t.Fatal("the room check said an empty socket had no room for 16 KiB")
	}
	t.Logf("room for %d bytes written without waiting", written)
}

// TestRoomCheckClosed: the check of a closed connection says there is no
// room, rather than asking a descriptor that may be another socket's now.
func TestRoomCheckClosed(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		if c, err := ln.Accept(); err == nil {
			defer c.Close()
			io.Copy(io.Discard, c)
		}
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	check := newRoomCheck(tls.Client(c, &tls.Config{}))
	if check == nil {
		t.Skip("the system sets a TCP_NOTSENT_LOWAT limit")
	}
	if !check.room(1) {
		t.Fatal("no room on a fresh connection")
	}
	c.Close()
	if check.room(1) {
		t.Fatal("room on a closed connection")
	}
}
