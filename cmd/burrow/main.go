// Command burrow reaches TCP services on devices behind NAT through a relay
// that cannot read the traffic. One binary plays every role:
//
//	burrow relay     the public relay agents attach to
//	burrow fleet     the key and map of a fleet of relays
//	burrow device    the agent on the device (dispatcher)
//	burrow connect   the agent on the user's machine (receiver)
//	burrow demo      all three in one process, on loopback
//
// Flags and configuration files live here; each role is a package that
// takes a Config. This command turns flags and files into those Configs,
// runs the roles and prints what they report; it must not speak a
// protocol or decide who gets in itself.
//
// Each command is built by one function (newDeviceCmd, newDeviceInviteCmd,
// …) in the file named for it: device.go and device_admin.go (the
// subcommands that talk to a running device), relay.go and relay_admin.go
// (those that work on a relay's data directory), fleet.go (a fleet's key
// and map in NATS), connect.go, pair.go, ping.go, id.go and demo.go. The device's configuration file is decoded
// into deviceFile (config.go), whose field comments are the one
// description of its keys: the README's reference and the keys of "burrow
// device --help" are generated from them (go generate).
package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	_ "net/http/pprof" // served only when BURROW_PPROF is set
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"sync/atomic"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/burrow-tunnel/burrow/client"
	"github.com/burrow-tunnel/burrow/internal/adminsock"
)

func main() {
	sigc := make(chan os.Signal, 1)
	signal.Notify(sigc, os.Interrupt, syscall.SIGTERM)
	ctx, stop := notifyStop(context.Background(), sigc, func() {
		fmt.Fprintln(os.Stderr, "burrow: interrupted again: exiting at once")
		os.Exit(1)
	})
	stopProfile, err := startProfile()
	if err == nil {
		err = newRoot(os.Stdout, os.Stderr).ExecuteContext(ctx)
		stopProfile()
	}
	stop()
	signal.Stop(sigc)
	if err != nil {
		fmt.Fprintln(os.Stderr, "burrow:", err)
		os.Exit(1)
	}
}

// stopper turns interrupts (SIGINT, SIGTERM) into a stop in two steps. The
// first cancels the command's context: the command stops gracefully. A
// command whose graceful stop may take a while (the relay drains its
// tunnels) watches the context [hurryContext] returns, which the second
// interrupt cancels: it then stops at once. For any other command the
// second interrupt ends the process at once, as a third does for every
// command.
type stopper struct {
	hurry   context.Context
	watched atomic.Bool // a command watches hurry
}

type stopperKey struct{}

// notifyStop returns a context cancelled by the first value on sigc (see
// stopper); exit ends the process. stop releases the goroutine that reads
// sigc.
func notifyStop(parent context.Context, sigc <-chan os.Signal, exit func()) (ctx context.Context, stop func()) {
	st := &stopper{}
	var hurry context.CancelFunc
	st.hurry, hurry = context.WithCancel(context.Background())
	ctx, cancel := context.WithCancel(context.WithValue(parent, stopperKey{}, st))
	done := make(chan struct{})
	go func() {
		for n := 1; ; n++ {
			select {
			case <-sigc:
			case <-done:
				return
			}
			switch {
			case n == 1:
				cancel()
			case n == 2 && st.watched.Load():
				hurry()
			default:
				exit()
				return
			}
		}
	}()
	return ctx, func() {
		close(done)
		cancel()
		hurry()
	}
}

// hurryContext returns a context that the second interrupt cancels, once
// the first has cancelled ctx (see stopper): the command that asks for it
// says it will stop at once then. Without a stopper (ctx does not come
// from notifyStop) the context is never cancelled.
func hurryContext(ctx context.Context) context.Context {
	st, ok := ctx.Value(stopperKey{}).(*stopper)
	if !ok {
		return context.Background()
	}
	st.watched.Store(true)
	return st.hurry
}

// startProfile serves performance work. If BURROW_PPROF names a loopback
// address, the runtime's profiles are served there (net/http/pprof); any
// other address is an error, since the profiles show what the process
// holds. If BURROW_CPUPROFILE names a file, a CPU profile is written to it
// until the returned function is called, when the command ends.
func startProfile() (func(), error) {
	if addr := os.Getenv("BURROW_PPROF"); addr != "" {
		if host, _, err := net.SplitHostPort(addr); err != nil || !net.ParseIP(host).IsLoopback() {
			return nil, fmt.Errorf("BURROW_PPROF=%s: want a loopback host:port, such as 127.0.0.1:6060 (the profiles must not be reachable from the network)", addr)
		}
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, fmt.Errorf("BURROW_PPROF: %w", err)
		}
		go http.Serve(ln, nil)
	}
	path := os.Getenv("BURROW_CPUPROFILE")
	if path == "" {
		return func() {}, nil
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("BURROW_CPUPROFILE: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("BURROW_CPUPROFILE: %w", err)
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}, nil
}

// agentProcs runs an agent (device or connect) on one processor unless
// GOMAXPROCS says otherwise. An agent is a pipeline of goroutines handing
// packets to one another; with more processors each hand-off can wake a
// sleeping thread, and on a 2-core machine that cost a quarter more CPU
// per GB and a fifth of the throughput (go run ./bench). One processor
// still moves about 1 Gbit/s per agent.
func agentProcs() {
	if os.Getenv("GOMAXPROCS") == "" {
		runtime.GOMAXPROCS(1)
	}
}

// globals are the flags every command shares.
type globals struct {
	logLevel    string
	logLevelSet func() bool // reports whether --log-level was given
	home        string      // --home; see homeDir
	stdout      io.Writer
	stderr      io.Writer
}

// homeDir is the client's home: --home, else BURROW_HOME, else burrow/
// under the user's config directory.
func (g *globals) homeDir() (string, error) {
	if g.home != "" {
		return g.home, nil
	}
	return client.DefaultHomeDir()
}

// isTerminal reports whether w is a terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// logger returns the logger for --log-level, writing text to stderr.
func (g *globals) logger() (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(g.logLevel)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", g.logLevel)
	}
	return slog.New(slog.NewTextHandler(g.stderr, &slog.HandlerOptions{Level: level})), nil
}

// quietLogger is the logger of a command that prints its own result and
// ends (ping, pair): warnings and errors only, unless --log-level asks for
// more. Its info lines (attached, session path, …) would only be noise
// between the lines the user ran it for.
func (g *globals) quietLogger() (*slog.Logger, error) {
	if !g.logLevelSet() {
		return slog.New(slog.NewTextHandler(g.stderr, &slog.HandlerOptions{Level: slog.LevelWarn})), nil
	}
	return g.logger()
}

func newRoot(stdout, stderr io.Writer) *cobra.Command {
	g := &globals{stdout: stdout, stderr: stderr}
	root := &cobra.Command{
		Use:   "burrow",
		Short: "Reach TCP services on devices behind NAT, end-to-end encrypted",
		Long: `burrow makes a TCP service on a device behind NAT or a firewall (a camera's
RTSP server, a router's admin page, an SSH daemon) reachable from anywhere,
without changing the app or the service and without opening the device's
firewall. Traffic is end-to-end encrypted between the client and the device;
the relay in the middle forwards packets it cannot read.

Start with "burrow demo" to see all three roles work on this machine.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       versionInfo(),
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.PersistentFlags().StringVar(&g.logLevel, "log-level", "info", "log detail: debug, info, warn or error (ping and pair: warn)")
	logFlag := root.PersistentFlags().Lookup("log-level")
	g.logLevelSet = func() bool { return logFlag.Changed }
	root.PersistentFlags().StringVar(&g.home, "home", "", "the client's directory: identity and known devices (default: $BURROW_HOME, or burrow/ in the user's config directory)")
	root.AddCommand(
		newIDCmd(g),
		newRelayCmd(g),
		newFleetCmd(g),
		newDeviceCmd(g),
		newConnectCmd(g),
		newPairCmd(g),
		newDevicesCmd(g),
		newPingCmd(g),
		newDemoCmd(g),
		newVersionCmd(g),
	)
	return root
}

// configDir is where burrow keeps its files by default.
func configDir() (string, error) {
	dir, err := os.UserConfigDir()
	if err != nil {
		return "", fmt.Errorf("no default configuration directory (%w): pass the path explicitly", err)
	}
	return filepath.Join(dir, "burrow"), nil
}

// serveAdmin serves h on the Unix socket at path (see package adminsock)
// until ctx is done or the returned stop is called; stop waits for the
// server and removes the socket.
func serveAdmin(ctx context.Context, path string, h http.Handler) (stop func(), err error) {
	ln, err := adminsock.Listen(path)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		adminsock.Serve(ctx, ln, h)
	}()
	return func() {
		cancel()
		<-done
		os.Remove(path)
	}, nil
}

// usageError reports a wrong invocation and points at the help.
func usageError(cmd *cobra.Command, format string, args ...any) error {
	return fmt.Errorf("%s (see '%s --help')", fmt.Sprintf(format, args...), cmd.CommandPath())
}
