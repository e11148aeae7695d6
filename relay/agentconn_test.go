package relay

import (
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/burrow-tunnel/burrow/internal/testing/israce"
)

// agentConnPair returns an agentConn accepted on loopback, as the relay
// accepts agents, and the plain connection of its peer.
func agentConnPair(t *testing.T) (*agentConn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := agentListener{ln}.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c
	}()
	peer, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c := <-accepted
	if c == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { c.Close(); peer.Close() })
	ac, ok := c.(*agentConn)
	if !ok {
		t.Fatalf("agentListener accepted a %T", c)
	}
	if runtime.GOOS == "linux" && !ac.raw.on() {
		t.Fatal("on Linux an agent's socket is read and written with raw system calls, but it has no rawIO")
	}
	return ac, peer
}

// TestAgentConnHold: while a writer holds the connection, the TLS records
// it writes are gathered, and nothing reaches the agent; at release they
// all go out, intact.
func TestAgentConnHold(t *testing.T) {
	ac, peer := agentConnPair(t)
	srv, err := New(Config{Identity: newIdentity(t)})
	if err != nil {
		t.Fatal(err)
	}
	server := tls.Server(ac, srv.TLSConfig())
	client := tls.Client(peer, &tls.Config{InsecureSkipVerify: true})
	hs := make(chan error, 1)
	go func() { hs <- server.Handshake() }()
	if err := client.Handshake(); err != nil {
		t.Fatal(err)
	}
	if err := <-hs; err != nil {
		t.Fatal(err)
	}

	msg := bytes.Repeat([]byte("0123456789abcdef"), 5<<10) // 80 KiB: six records
	ac.hold()
	for off := 0; off < len(msg); off += 20 << 10 {
		if _, err := server.Write(msg[off : off+20<<10]); err != nil {
			t.Fatal(err)
		}
	}
	peer.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	var one [1]byte
	if n, err := peer.Read(one[:]); n != 0 || !isTimeout(err) {
		t.Fatalf("a held batch's records reached the agent before release: read %d bytes (%v)", n, err)
	}
	if ac.buf == nil || len(*ac.buf) < len(msg) {
		t.Fatal("the held records were not gathered")
	}
	if err := ac.release(); err != nil {
		t.Fatal(err)
	}
	if ac.buf != nil {
		t.Fatal("release kept the batch's buffer")
	}
	peer.SetReadDeadline(time.Now().Add(5 * time.Second))
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(client, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, msg) {
		t.Fatal("the released batch arrived changed")
	}
	// Not held: a write goes straight out.
	if _, err := server.Write([]byte("now")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(client, got[:3]); err != nil || string(got[:3]) != "now" {
		t.Fatalf("a write with no batch held: %q, %v", got[:3], err)
	}
}

// TestAgentConnWriteErrorSticks: once a write has failed (here a held
// batch's release, past its deadline, part way into a record), every later
// write and release fails too, so that no TLS record follows a cut one.
func TestAgentConnWriteErrorSticks(t *testing.T) {
	ac, _ := agentConnPair(t) // the peer never reads
	ac.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
	ac.hold()
	chunk := make([]byte, 64<<10)
	var err error
	for written := 0; err == nil; written += len(chunk) {
		if written > 1<<30 {
			t.Fatal("a held batch to a peer that never reads never failed")
		}
		_, err = ac.Write(chunk) // flushed at maxHeld
	}
	if !isTimeout(err) {
		t.Fatalf("the batch failed with %v, want a timeout", err)
	}
	ac.SetWriteDeadline(time.Time{})
	if err := ac.release(); !isTimeout(err) {
		t.Fatalf("release after a failed write: %v, want the write's error", err)
	}
	if n, err := ac.Write([]byte("x")); n != 0 || !isTimeout(err) {
		t.Fatalf("a write after a failed one: %d, %v; want 0 and the first error", n, err)
	}
}

func isTimeout(err error) bool {
	ne, ok := errors.AsType[net.Error](err)
	return ok && ne.Timeout()
}

// TestAgentConnIO: an agent's connection reads and writes as any
// connection does: a large write into a socket whose peer reads late goes
// out whole; reads see the peer's bytes, then EOF; deadlines give timeouts;
// Close ends a blocked read; a reset peer gives a write error naming the
// connection.
func TestAgentConnIO(t *testing.T) {
	t.Run("large write", func(t *testing.T) {
		ac, peer := agentConnPair(t)
		msg := make([]byte, 8<<20)
		for i := range msg {
			msg[i] = byte(i * 31)
		}
		got := make(chan [32]byte, 1)
		go func() {
			time.Sleep(100 * time.Millisecond) // let the send buffer fill
			h := sha256.New()
			io.Copy(h, io.LimitReader(peer, int64(len(msg))))
			got <- [32]byte(h.Sum(nil))
		}()
		if n, err := ac.Write(msg); n != len(msg) || err != nil {
			t.Fatalf("Write = %d, %v; want %d, nil", n, err, len(msg))
		}
		if <-got != sha256.Sum256(msg) {
			t.Fatal("the bytes arrived changed")
		}
	})
	t.Run("read then EOF", func(t *testing.T) {
		ac, peer := agentConnPair(t)
		peer.Write([]byte("hello"))
		peer.Close()
		b, err := io.ReadAll(ac)
		if err != nil || string(b) != "hello" {
			t.Fatalf("read %q, %v; want hello and EOF", b, err)
		}
		if n, err := ac.Read(make([]byte, 1)); n != 0 || err != io.EOF {
			t.Fatalf("after EOF: %d, %v", n, err)
		}
	})
	t.Run("deadlines", func(t *testing.T) {
		ac, _ := agentConnPair(t)
		ac.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		if _, err := ac.Read(make([]byte, 1)); !isTimeout(err) {
			t.Fatalf("a read past its deadline: %v, want a timeout", err)
		}
		ac.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
		big := make([]byte, 64<<20) // more than any send buffer: the peer never reads
		if n, err := ac.Write(big); !isTimeout(err) || n >= len(big) {
			t.Fatalf("a write past its deadline: %d, %v; want a timeout", n, err)
		}
	})
	t.Run("close ends a read", func(t *testing.T) {
		ac, _ := agentConnPair(t)
		done := make(chan error, 1)
		go func() {
			_, err := ac.Read(make([]byte, 1))
			done <- err
		}()
		time.Sleep(50 * time.Millisecond)
		ac.Close()
		select {
		case err := <-done:
			if !errors.Is(err, net.ErrClosed) {
				t.Fatalf("a read ended by Close: %v, want net.ErrClosed", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("Close did not end a blocked read")
		}
	})
	t.Run("reset", func(t *testing.T) {
		ac, peer := agentConnPair(t)
		peer.(*net.TCPConn).SetLinger(0)
		peer.Close()
		var err error
		for range 100 {
			if _, err = ac.Write([]byte("x")); err != nil {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		if !errors.Is(err, syscall.ECONNRESET) && !errors.Is(err, syscall.EPIPE) {
			t.Fatalf("writes to a reset peer: %v, want ECONNRESET or EPIPE", err)
		}
		if _, ok := errors.AsType[*net.OpError](err); !ok {
			t.Fatalf("the error %v does not name the connection", err)
		}
	})
}

// TestAgentConnDoesNotAllocate: reading and writing an agent's
// connection allocates nothing.
func TestAgentConnDoesNotAllocate(t *testing.T) {
	if israce.Enabled {
		t.Skip("the race detector makes sync.Pool drop items; .ci/run runs this without it")
	}
	ac, peer := agentConnPair(t)
	go io.Copy(peer, peer) // echo
	b := make([]byte, 1024)
	allocs := testing.AllocsPerRun(100, func() {
		if _, err := ac.Write(b); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(ac, b); err != nil {
			t.Fatal(err)
		}
	})
	if allocs > 0 {
		t.Fatalf("a write and a read allocated %.1f times", allocs)
	}
}
