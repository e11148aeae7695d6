package lan

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"
)

// A Follower keeps a device announced while the host's interfaces come
// and go: a device that boots before its Wi-Fi is up, or moves to another
// network, is announced on the interfaces it has now.
type Follower struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu     sync.Mutex
	status string // guarded by mu
}

// Status says where the device is announced now ("announced on eth0
// (192.168.1.20 fe80::1), port 4242"), or why it is not.
func (f *Follower) Status() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.status
}

func (f *Follower) setStatus(s string) {
	f.mu.Lock()
	f.status = s
	f.mu.Unlock()
}

// DefaultFollowEvery is how often a [Follower] looks at the interfaces
// when [Follow] is given no interval.
const DefaultFollowEvery = 10 * time.Second

// Follow announces the device as [Announce] does and looks at the
// interfaces every interval (zero: [DefaultFollowEvery]); when the
// interfaces it would announce on or their addresses changed, it
// announces again on those. It logs, on cfg.Logger, where the device is
// announced and why it is not. It runs until [Follower.Close]. The
// interfaces are those of the network namespace of the thread that calls
// it: call it from the process's namespace.
func Follow(cfg AnnounceConfig, every time.Duration) (*Follower, error) {
	if cfg.Device.IsZero() || cfg.Port == 0 {
		_, err := Announce(cfg) // the same errors as Announce
		return nil, err
	}
	if every <= 0 {
		every = DefaultFollowEvery
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	ctx, cancel := context.WithCancel(context.Background())
	f := &Follower{cancel: cancel, status: "starting"}
	f.wg.Go(func() { f.run(ctx, cfg, every) })
	return f, nil
}

func (f *Follower) run(ctx context.Context, cfg AnnounceConfig, every time.Duration) {
	var (
		a       *Announcer
		last    string
		lastErr string
	)
	defer func() {
		if a != nil {
			a.Close()
		}
	}()
	t := time.NewTicker(every)
	defer t.Stop()
	for first := true; ; first = false {
		if !first {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
		now := ifaceState(cfg.Interface)
		if !first && now == last && (a != nil || now == "") {
			continue
		}
		if a != nil {
			a.Close()
			a = nil
		}
		last = now
		var err error
		if a, err = Announce(cfg); err != nil {
			f.setStatus("not announced: " + err.Error())
			if msg := err.Error(); msg != lastErr {
				cfg.Logger.Warn("not announced on the LAN: clients on this network reach the device only through its relay", "err", err)
				lastErr = msg
			}
			continue
		}
		lastErr = ""
		f.setStatus(fmt.Sprintf("announced on %s, port %d", now, cfg.Port))
		cfg.Logger.Info("announced on the LAN", "interfaces", now, "port", cfg.Port)
	}
}

// ifaceState describes the interfaces an announcement would use and
// their addresses, to tell when they change; empty if there are none.
func ifaceState(name string) string {
	ifaces, err := interfaces(name)
	if err != nil {
		return ""
	}
	var parts []string
	for _, ifi := range ifaces {
		addrs := ifaceAddrs(ifi)
		if len(addrs) == 0 {
			continue
		}
		s := make([]string, len(addrs))
		for i, ad := range addrs {
			s[i] = ad.String()
		}
		slices.Sort(s)
		parts = append(parts, fmt.Sprintf("%s(%s)", ifi.Name, strings.Join(s, " ")))
	}
	slices.Sort(parts)
	return strings.Join(parts, " ")
}

// Close stops announcing and waits until the device is no longer
// answered for. It is idempotent.
func (f *Follower) Close() error {
	f.cancel()
	f.wg.Wait()
	return nil
}
