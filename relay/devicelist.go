package relay

import (
	"bufio"
	"bytes"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/burrow-tunnel/burrow/identity"
)

// A DeviceList is a file of device IDs allowed to attach: one ID per line,
// optionally followed by the device's name (see [CheckDeviceName]), blank
// lines and "#" comments ignored. The file is read again when it
// changes, so an operator can add a device without restarting the relay.
// Its Allow method fits [Config.AllowDevice]. It is safe for concurrent use.
type DeviceList struct {
	path string
	log  *slog.Logger

	mu      sync.Mutex
	ids     map[identity.ID]string // ID → name ("" if none); guarded by mu
	modTime time.Time              // of the file ids came from; guarded by mu
	size    int64                  // guarded by mu
	checked time.Time              // last stat; guarded by mu
}

// deviceListRecheck is how often Allow looks at the file again.
const deviceListRecheck = time.Second

// LoadDeviceList reads the device list at path. A malformed line is an
// error naming the line, so a typo never silently locks a device out.
func LoadDeviceList(path string, log *slog.Logger) (*DeviceList, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	l := &DeviceList{path: path, log: log}
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("device list: %w", err)
	}
	if err := l.load(fi); err != nil {
		return nil, err
	}
	return l, nil
}

// load reads the file; it is called with mu held or before l is shared.
func (l *DeviceList) load(fi os.FileInfo) error {
	b, err := os.ReadFile(l.path)
	if err != nil {
		return fmt.Errorf("device list: %w", err)
	}
	ids, err := ParseDeviceList(b)
	if err != nil {
		return fmt.Errorf("device list %s: %w", l.path, err)
	}
	l.ids, l.modTime, l.size, l.checked = ids, fi.ModTime(), fi.Size(), time.Now()
	return nil
}

// ParseDeviceList parses the contents of a device list file into the
// names of the devices it lists, "" for those it names not. A line holds
// an ID and at most a name.
func ParseDeviceList(b []byte) (map[identity.ID]string, error) {
	ids := make(map[identity.ID]string)
	sc := bufio.NewScanner(bytes.NewReader(b))
	for line := 1; sc.Scan(); line++ {
		s := sc.Text()
		if i := strings.IndexByte(s, '#'); i >= 0 {
			s = s[:i]
		}
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		f := strings.Fields(s)
		if len(f) > 2 {
			return nil, fmt.Errorf("line %d: %q: want a device ID, then at most its name", line, s)
		}
		id, err := identity.ParseID(f[0])
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", line, err)
		}
		var name string
		if len(f) == 2 {
			name = f[1]
			if err := CheckDeviceName(name); err != nil {
				return nil, fmt.Errorf("line %d: %w", line, err)
			}
		}
		ids[id] = name
	}
	return ids, sc.Err()
}

// Len returns how many devices the list allows.
func (l *DeviceList) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.ids)
}

// Allow reports whether the list allows id, reloading the file first if it
// changed. If the changed file does not parse, the last good list stays in
// force and the error is logged.
func (l *DeviceList) Allow(id identity.ID) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.refreshLocked()
	_, ok := l.ids[id]
	return ok
}

// Devices returns the devices the list admits and their names ("" if
// none), reloading the file first if it changed, as Allow does.
func (l *DeviceList) Devices() map[identity.ID]string {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.refreshLocked()
	return maps.Clone(l.ids)
}

// refreshLocked reloads the file if it changed and was not looked at for
// deviceListRecheck; it is called with mu held.
func (l *DeviceList) refreshLocked() {
	now := time.Now()
	if now.Sub(l.checked) < deviceListRecheck {
		return
	}
	l.checked = now
	fi, err := os.Stat(l.path)
	switch {
	case err != nil:
		l.log.Warn("device list unreadable; keeping the last one", "path", l.path, "err", err)
	case !fi.ModTime().Equal(l.modTime) || fi.Size() != l.size:
		if err := l.load(fi); err != nil {
			// Remember this version so the warning is logged once.
			l.modTime, l.size = fi.ModTime(), fi.Size()
			l.log.Warn("device list changed but does not parse; keeping the last one", "err", err)
		} else {
			l.log.Info("device list reloaded", "path", l.path, "devices", len(l.ids))
		}
	}
}
