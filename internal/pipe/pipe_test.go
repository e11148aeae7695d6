package pipe

import (
	"bytes"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// tcpPair returns the two ends of a loopback TCP connection.
func tcpPair(t *testing.T) (*net.TCPConn, *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ch := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		ch <- c
	}()
	a, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b := <-ch
	t.Cleanup(func() { a.Close(); b.Close() })
	return a.(*net.TCPConn), b.(*net.TCPConn)
}

// joined returns the outer ends of two TCP connections joined in the
// middle: bytes written to left come out of right and back.
func joined(t *testing.T) (left, right *net.TCPConn, res <-chan Result) {
	left, a := tcpPair(t)
	b, right := tcpPair(t)
	ch := make(chan Result, 1)
	go func() { ch <- Join(a, b) }()
	return left, right, ch
}

func TestHalfClose(t *testing.T) {
	defer goleak.VerifyNone(t)
	left, right, res := joined(t)
	left.Write([]byte("request"))
	left.CloseWrite()
	got, err := io.ReadAll(right) // sees EOF after the request
	if err != nil || string(got) != "request" {
		t.Fatalf("right read %q, %v", got, err)
	}
	// The other direction still flows after the half-close.
	right.Write([]byte("reply"))
	right.CloseWrite()
	got, err = io.ReadAll(left)
	if err != nil || string(got) != "reply" {
		t.Fatalf("left read %q, %v", got, err)
	}
	r := <-res
	if r.Err != nil || r.AToB != 7 || r.BToA != 5 {
		t.Fatalf("result %+v", r)
	}
}

func TestAbortPropagates(t *testing.T) {
	defer goleak.VerifyNone(t)
	left, right, res := joined(t)
	left.Write([]byte("x"))
	buf := make([]byte, 1)
	if _, err := io.ReadFull(right, buf); err != nil {
		t.Fatal(err)
	}
	// A reset on the left becomes a reset on the right, promptly.
	left.SetLinger(0)
	left.Close()
	right.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err := right.Read(buf)
	var ne net.Error
	if err == nil || errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("right read after abort: %v, want a reset", err)
	}
	if r := <-res; r.Err == nil {
		t.Fatal("join reported a clean end after an abort")
	}
}

func TestLargeCopy(t *testing.T) {
	left, right, res := joined(t)
	data := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB
	go func() {
		left.Write(data)
		left.CloseWrite()
	}()
	got, err := io.ReadAll(right)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("copied %d bytes, %v", len(got), err)
	}
	right.Close()
	io.ReadAll(left)
	<-res
}
