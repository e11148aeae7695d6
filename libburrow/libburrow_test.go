package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/burrow-tunnel/burrow/device"
	"github.com/burrow-tunnel/burrow/internal/testing/tunneltest"
)

// These tests build libburrow.so as apps do (go build -buildmode=c-shared),
// compile the C programs with gcc against it and burrow.h, and run them,
// and the Python example, against a relay and a device on loopback.

const page = "<h1>hello from the camera</h1>\n"

// target is a relay and a device serving "http" (page at /page) and
// "echo", with a role that grants both to whoever pairs.
type target struct {
	dev *device.Device
}

func startTarget(t *testing.T) target {
	t.Helper()
	r := tunneltest.StartRelay(t)
	mux := http.NewServeMux()
	mux.HandleFunc("/page", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, page) })
	web := tunneltest.HTTPServer(t, mux)
	echo := tunneltest.StartServer(t, tunneltest.Echo)
	d := tunneltest.StartDevice(t, r, device.Config{
		Name:     "cam",
		Services: map[string]string{"http": web, "echo": echo.Addr},
		Roles:    map[string][]string{"admin": {device.AllServices}},
		StateDir: t.TempDir(),
		// The cycles test opens tunnels faster than a device allows one
		// client by default.
		TunnelRate:  1e6,
		TunnelBurst: 1e6,
	})
	return target{dev: d}
}

// invite makes a fresh invite.
func (tg target) invite(t *testing.T) string {
	t.Helper()
	inv, err := tg.dev.Invite("admin", time.Minute, "")
	if err != nil {
		t.Fatal(err)
	}
	return inv.String()
}

// pairedHome returns a new client home paired with the device as "cam".
func (tg target) pairedHome(t *testing.T) string {
	t.Helper()
	h := home(t)
	lc, err := newClient(h)
	if err != nil {
		t.Fatal(err)
	}
	defer lc.close(func(int32) {})
	lc.setLAN(false) // the relay and the device are on loopback
	if err := lc.pair(tg.invite(t), "cam"); err != nil {
		t.Fatal(err)
	}
	return h
}

// home returns a new, private client home directory.
func home(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "home")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	return dir
}

// build builds the library in mode (c-shared or c-archive) into dir and
// returns its path.
func build(t *testing.T, dir, mode string) string {
	t.Helper()
	if testing.Short() {
		t.Skip("builds libburrow and C programs")
	}
	if _, err := exec.LookPath("gcc"); err != nil {
		if os.Getenv("BURROW_REQUIRE_GCC") == "1" {
			t.Fatal("gcc is missing and BURROW_REQUIRE_GCC=1: install it (apt-get install gcc)")
		}
		t.Skip("gcc is missing (apt-get install gcc); BURROW_REQUIRE_GCC=1 makes this a failure")
	}
	lib := filepath.Join(dir, "libburrow.so")
	if mode == "c-archive" {
		lib = filepath.Join(dir, "libburrow.a")
	}
	out, err := exec.Command("go", "build", "-buildmode="+mode, "-o", lib, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build -buildmode=%s: %v\n%s", mode, err, out)
	}
	return lib
}

// compile compiles the C files into dir/name against burrow.h and lib.
func compile(t *testing.T, lib, name string, srcs ...string) string {
	t.Helper()
	exe := filepath.Join(filepath.Dir(lib), name)
	args := append([]string{"-Wall", "-Werror", "-I.", "-o", exe}, srcs...)
	if strings.HasSuffix(lib, ".a") {
		args = append(args, lib, "-lpthread", "-lresolv")
	} else {
		args = append(args, "-L"+filepath.Dir(lib), "-lburrow", "-Wl,-rpath,"+filepath.Dir(lib), "-lpthread")
	}
	if out, err := exec.Command("gcc", args...).CombinedOutput(); err != nil {
		t.Fatalf("gcc %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return exe
}

// run runs a program and returns its stdout; it fails the test if the
// program fails.
func run(t *testing.T, env []string, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	// The relay and the device are on loopback: the examples ask no LAN.
	cmd.Env = append(os.Environ(), append(env, "FETCH_NO_LAN=1")...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %s: %v\nstdout:\n%s\nstderr:\n%s", filepath.Base(name), strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
	t.Logf("%s %s:\n%s%s", filepath.Base(name), strings.Join(args, " "), stdout.String(), stderr.String())
	return stdout.String()
}

// TestLibburrow: the C and Python examples pair with a device and fetch a
// page through burrow_dial; 50 threads dial at once and each gets its own
// data back; every misuse returns -1 with a message; a forward carries a
// connection and stops when closed; and 1,000 dial/close cycles leave
// the process's memory and open files as they were after 100.
func TestLibburrow(t *testing.T) {
	dir := t.TempDir()
	lib := build(t, dir, "c-shared")
	fetch := compile(t, lib, "fetch", "../examples/c/fetch.c")
	stress := compile(t, lib, "stress", "testdata/stress.c")
	tg := startTarget(t)
	h := tg.pairedHome(t)

	t.Run("C", func(t *testing.T) {
		if got := run(t, nil, fetch, home(t), tg.invite(t), "cam", "http", "/page"); got != page {
			t.Fatalf("fetch printed %q, want %q", got, page)
		}
	})
	t.Run("Python", func(t *testing.T) {
		python, err := exec.LookPath("python3")
		if err != nil {
			if os.Getenv("BURROW_REQUIRE_PYTHON") == "1" {
				t.Fatal("python3 is missing and BURROW_REQUIRE_PYTHON=1: install it (apt-get install python3)")
			}
			t.Skip("python3 is missing (apt-get install python3); BURROW_REQUIRE_PYTHON=1 makes this a failure")
		}
		got := run(t, []string{"BURROW_LIB=" + lib}, python, "../examples/python/fetch.py", home(t), tg.invite(t), "cam", "http", "/page")
		if got != page {
			t.Fatalf("fetch.py printed %q, want %q", got, page)
		}
	})
	t.Run("Concurrent", func(t *testing.T) {
		out := run(t, nil, stress, h, "cam", "concurrent")
		if !strings.Contains(out, "50 dials, all data correct") {
			t.Fatalf("stress concurrent printed %q", out)
		}
	})
	t.Run("Misuse", func(t *testing.T) {
		out := run(t, nil, stress, h, "cam", "misuse")
		for _, want := range []string{
			`dial NULL device: device is NULL`,
			`dial unknown device: unknown device "nosuch"`,
			`dial unknown service: dial cam/nosuch: unknown service "nosuch"`,
			`dial closed client: handle`,
			`close closed forward: handle`,
			`dial on a forward handle: handle`,
			`client_lan once started: the client has started`,
			`forward small buffer: addr_len 8 cannot hold`,
		} {
			if !strings.Contains(out, want) {
				t.Errorf("stress misuse did not print %q", want)
			}
		}
	})
	t.Run("Forward", func(t *testing.T) {
		run(t, nil, stress, h, "cam", "forward")
	})
	t.Run("Cycles", func(t *testing.T) {
		out := run(t, nil, stress, h, "cam", "cycles", "1300", "300")
		m := regexp.MustCompile(`rss_warm_kib=(\d+) rss_end_kib=(\d+) fds_warm=(\d+) fds_end=(\d+)`).FindStringSubmatch(out)
		if m == nil {
			t.Fatalf("stress cycles printed %q", out)
		}
		n := make([]int, 4)
		for i := range n {
			n[i], _ = strconv.Atoi(m[i+1])
		}
		if warm, end := n[0], n[1]; end*10 > warm*11 || end*10 < warm*9 {
			t.Errorf("RSS went from %d KiB after 100 dial/close cycles to %d KiB after 1,000: more than 10%% apart", warm, end)
		}
		if n[3] != n[2] {
			t.Errorf("%d files open after 100 dial/close cycles, %d after 1,000: a tunnel's socket was not closed", n[2], n[3])
		}
	})
}

// TestCArchive: the library also builds as a static archive, and the C
// example linked with it fetches the page.
func TestCArchive(t *testing.T) {
	lib := build(t, t.TempDir(), "c-archive")
	fetch := compile(t, lib, "fetch", "../examples/c/fetch.c")
	tg := startTarget(t)
	if got := run(t, nil, fetch, home(t), tg.invite(t), "cam", "http", "/page"); got != page {
		t.Fatalf("fetch printed %q, want %q", got, page)
	}
}

// TestDialJoinEnds: in process, a socket from dial carries data both ways
// with half-close, and once the app has closed it and the client is
// closed, no goroutine of the client or the join is left.
func TestDialJoinEnds(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	// The relay and the device stop when the subtest ends.
	t.Run("dial", testDialJoinEnds)
}

func testDialJoinEnds(t *testing.T) {
	tg := startTarget(t)
	lc, err := newClient(home(t))
	if err != nil {
		t.Fatal(err)
	}
	lc.setLAN(false) // the relay and the device are on loopback
	if err := lc.pair(tg.invite(t), "cam"); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i := range 5 {
		wg.Go(func() {
			fd, err := lc.dial("cam", "echo")
			if err != nil {
				t.Error(err)
				return
			}
			f := os.NewFile(uintptr(fd), "tunnel")
			conn, err := net.FileConn(f)
			f.Close()
			if err != nil {
				t.Error(err)
				return
			}
			defer conn.Close()
			msg := fmt.Sprintf("tunnel %d", i)
			io.WriteString(conn, msg)
			conn.(*net.UnixConn).CloseWrite()
			if got, err := io.ReadAll(conn); err != nil || string(got) != msg {
				t.Errorf("echo: got %q, %v; want %q", got, err, msg)
			}
		})
	}
	wg.Wait()
	if _, err := lc.dial("cam", "nosuch"); err == nil || !strings.Contains(err.Error(), "unknown service") {
		t.Errorf("dial of an unknown service: %v", err)
	}
	// A tunnel read to its end, whose socket the app has neither closed
	// nor shut down for writing: closing the client does not wait for the
	// app.
	fd, err := lc.dial("cam", "http")
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fd), "tunnel")
	kept, err := net.FileConn(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	defer kept.Close()
	io.WriteString(kept, "GET /page HTTP/1.0\r\n\r\n")
	if got, err := io.ReadAll(kept); err != nil || !strings.Contains(string(got), page) {
		t.Fatalf("page: got %q, %v", got, err)
	}
	closed := make(chan struct{})
	go func() {
		lc.close(func(int32) {})
		close(closed)
	}()
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("closing the client waits for the app to close a finished tunnel's socket")
	}
	if _, err := lc.dial("cam", "echo"); err == nil {
		t.Error("a closed client dialed")
	}
}

// TestCallRecoversPanic: a panic in a call's body becomes -1 and a
// message on its handle (0 when the handle is not open), not a crash.
func TestCallRecoversPanic(t *testing.T) {
	if got := call(0, func() (int32, error) { panic("boom") }); got != -1 {
		t.Fatalf("call returned %d, want -1", got)
	}
	if msg, ok := message(0); !ok || !strings.Contains(msg, "internal error in libburrow: boom") {
		t.Errorf("message of handle 0 = %q, %v", msg, ok)
	}
	h := add(&libForward{})
	defer remove(h)
	call(h, func() (int32, error) { var m map[string]int; m["x"] = 1; return 0, nil })
	if msg, _ := message(h); !strings.Contains(msg, "assignment to entry in nil map") {
		t.Errorf("message of handle %d = %q", h, msg)
	}
}

// TestTypechecksForDarwin: the library type-checks for macOS and iOS
// (c-archive), which this machine cannot build (no clang, no SDK): no
// Linux-only system call or constant may slip in.
func TestTypechecksForDarwin(t *testing.T) {
	if testing.Short() {
		t.Skip("runs go vet")
	}
	cmd := exec.Command("go", "vet", ".")
	cmd.Env = append(os.Environ(), "GOOS=darwin", "GOARCH=arm64")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go vet for darwin/arm64: %v\n%s", err, out)
	}
}
