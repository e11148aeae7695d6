// Presence: which relay of the fleet holds each device, and which relays
// are alive. Each relay writes its devices' attaches and detaches (never
// periodically), refreshes its own liveness key, and keeps the whole map
// and the set of live relays in memory from watches of both buckets, so
// that Locate answers without asking NATS.

package fleetstate

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/relay"
)

// The presence buckets (see the package comment).
const (
	PresenceBucket = "burrow_presence"
	RelaysBucket   = "burrow_relays"
)

// Defaults of [PresenceConfig].
const (
	DefaultLivenessTTL     = 6 * time.Second
	DefaultLivenessRefresh = 2 * time.Second
	DefaultPresenceQueue   = 4096
	DefaultPresenceWriters = 16
)

// retryEvery is how often writes that failed are tried again.
const retryEvery = time.Second

// PresenceConfig configures a [Presence].
type PresenceConfig struct {
	// Conn is the connection to NATS (with JetStream). Required. The
	// Presence uses it but does not close it; it should reconnect without
	// end (nats.MaxReconnects(-1)), as for [Config].
	Conn *nats.Conn

	// Relay is this relay's ID, which its presence records and liveness
	// key name. Required.
	Relay identity.ID

	// Replicas is how many copies of each bucket NATS keeps, when the
	// Presence creates it. Zero means 1.
	Replicas int

	// LivenessTTL is how long this relay's liveness key counts after each
	// refresh: other relays stop locating devices at this relay that long
	// after its last refresh. It is also the relays bucket's MaxAge when
	// this relay creates the bucket. Zero means [DefaultLivenessTTL] (6s).
	LivenessTTL time.Duration

	// LivenessRefresh is how often this relay refreshes its liveness key;
	// it must be less than LivenessTTL (a third of it leaves room for two
	// lost refreshes). Zero means [DefaultLivenessRefresh] (2s).
	LivenessRefresh time.Duration

	// Queue bounds the devices whose attach or detach waits to be
	// written. Events for the same device coalesce into one write of its
	// latest state; past the bound, events are not lost but found by a
	// scan of all devices of this relay, and the overflow is logged. Zero
	// means [DefaultPresenceQueue] (4096).
	Queue int

	// Writers is how many writes to NATS run at once. Zero means
	// [DefaultPresenceWriters] (16).
	Writers int

	// Timeout bounds each write to NATS. Zero means 5s.
	Timeout time.Duration

	// Logger receives a line when NATS is lost and found again, for
	// records it cannot read and when the queue overflows. Nil discards
	// logs.
	Logger *slog.Logger
}

// presenceRecord is the value of a device's key in the presence bucket
// (format version 1); the key's KV revision is the attach's epoch.
type presenceRecord struct {
	V     int    `json:"v"`
	Relay string `json:"relay"`
}

// livenessRecord is the value of a relay's key in the relays bucket
// (format version 1).
type livenessRecord struct {
	V     int   `json:"v"`
	TTLms int64 `json:"ttl_ms"` // the key counts this long after it was written
}

// entry is a device's latest presence record, as the watch saw it. The
// relay is kept as its index in Presence.relayIDs: every relay holds an
// entry for every device of the fleet, so each byte counts (index 0 is
// this relay).
type entry struct {
	relay uint32
	rev   uint64
}

// selfIndex is this relay's index in Presence.relayIDs.
const selfIndex = 0

// relayIndexLocked returns the index of the relay id in p.relayIDs,
// adding it if it is new.
func (p *Presence) relayIndexLocked(id identity.ID) uint32 {
	if i, ok := p.relayIndex[id]; ok {
		return i
	}
	i := uint32(len(p.relayIDs))
	p.relayIDs = append(p.relayIDs, id)
	p.relayIndex[id] = i
	return i
}

// own is what this relay wants the presence record of one of its devices
// to be, and how far its writing has got.
type own struct {
	attached bool   // the device is attached here (else: delete our record)
	rev      uint64 // revision of our record that landed; 0: none known
	dirty    bool   // the wanted state is not written yet
	busy     bool   // a writer is writing it
	queued   bool   // it is in the queue
}

// A Presence is the fleet's presence registry in NATS, as one relay sees
// it: it implements [relay.Presence]. Attached and Detached return at
// once and are written in the background; Locate and Live answer from
// memory, also while NATS is unreachable (liveness then stands still as
// it was when NATS was lost, until the watches have caught up again).
// Writes that fail are retried until they land, the device's latest state
// winning. A Presence is safe for concurrent use.
type Presence struct {
	nc        *nats.Conn
	self      identity.ID
	presence  jetstream.KeyValue
	relays    jetstream.KeyValue
	ttl       time.Duration
	refresh   time.Duration
	timeout   time.Duration
	log       *slog.Logger
	queue     chan identity.ID
	liveValue []byte

	mu         sync.Mutex
	entries    map[identity.ID]entry     // device → latest record seen; guarded by mu
	relayIDs   []identity.ID             // the relays entries name, by index; guarded by mu
	relayIndex map[identity.ID]uint32    // the index of each in relayIDs; guarded by mu
	mine       map[identity.ID]*own      // devices this relay writes for; guarded by mu
	expires    map[identity.ID]time.Time // relay → when its liveness lapses; guarded by mu
	frozen     time.Time                 // non-zero: NATS lost at this time, liveness stands still; guarded by mu
	overflow   bool                      // the queue overflowed: scan mine; guarded by mu
	retry      bool                      // a write failed: scan mine later; guarded by mu
	onTaken    func(identity.ID)         // guarded by mu

	stop      context.CancelFunc
	stopWrite context.CancelFunc
	wg        sync.WaitGroup // the watch and refresh loops
	writers   sync.WaitGroup // the writers and their scanner
	closeOnce sync.Once
}

var _ relay.Presence = (*Presence)(nil)

// OpenPresence opens the presence registry on cfg.Conn, creating its
// buckets if they do not exist, writes this relay's liveness key and
// loads the presence map and the live relays; it fails if NATS does not
// answer in time. A cluster that cannot hold the buckets yet is waited
// for, as by [Open]. Close stops it.
func OpenPresence(ctx context.Context, cfg PresenceConfig) (*Presence, error) {
	if err := cfg.fill(); err != nil {
		return nil, err
	}
	p := &Presence{
		nc: cfg.Conn, self: cfg.Relay, ttl: cfg.LivenessTTL, refresh: cfg.LivenessRefresh, timeout: cfg.Timeout, log: cfg.Logger,
		queue:     make(chan identity.ID, cfg.Queue),
		liveValue: encode(livenessRecord{V: FormatVersion, TTLms: cfg.LivenessTTL.Milliseconds()}),
		entries:   make(map[identity.ID]entry), mine: make(map[identity.ID]*own), expires: make(map[identity.ID]time.Time),
		relayIDs: []identity.ID{cfg.Relay}, relayIndex: map[identity.ID]uint32{cfg.Relay: selfIndex},
	}
	js, err := jetstream.New(cfg.Conn)
	if err != nil {
		return nil, fmt.Errorf("open presence: %w", err)
	}
	if p.presence, err = openBucketConfig(ctx, p.timeout, p.log, js, jetstream.KeyValueConfig{Bucket: PresenceBucket, Replicas: cfg.Replicas,
		Description: "burrow relay fleet: the relay holding each device, see package fleetstate"}); err != nil {
		return nil, fmt.Errorf("open presence: %w", err)
	}
	if p.relays, err = openBucketConfig(ctx, p.timeout, p.log, js, jetstream.KeyValueConfig{Bucket: RelaysBucket, Replicas: cfg.Replicas, TTL: cfg.LivenessTTL,
		Description: "burrow relay fleet: the live relays, see package fleetstate"}); err != nil {
		return nil, fmt.Errorf("open presence: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	if _, err := p.relays.Put(ctx, p.self.String(), p.liveValue); err != nil {
		return nil, fmt.Errorf("open presence: write this relay's liveness key: %w", err)
	}
	wctx, stop := context.WithCancel(context.Background())
	p.stop = stop
	loaded := make(chan struct{})
	p.wg.Add(2)
	go p.watchLoop(wctx, loaded)
	go p.refreshLoop(wctx)
	wrctx, stopWrite := context.WithCancel(context.Background())
	p.stopWrite = stopWrite
	p.writers.Add(cfg.Writers + 1)
	for range cfg.Writers {
		go p.writer(wrctx)
	}
	go p.scanner(wrctx)
	select {
	case <-loaded:
		return p, nil
	case <-ctx.Done():
		p.Close()
		return nil, fmt.Errorf("open presence: load the presence map: %w", ctx.Err())
	}
}

// fill checks cfg and fills in its defaults.
func (cfg *PresenceConfig) fill() error {
	switch {
	case cfg.Conn == nil:
		return errors.New("fleetstate: PresenceConfig.Conn is required")
	case cfg.Relay.IsZero():
		return errors.New("fleetstate: PresenceConfig.Relay is required")
	case cfg.Replicas < 0 || cfg.LivenessTTL < 0 || cfg.LivenessRefresh < 0 || cfg.Queue < 0 || cfg.Writers < 0 || cfg.Timeout < 0:
		return errors.New("fleetstate: negative value in PresenceConfig")
	}
	if cfg.LivenessTTL == 0 {
		cfg.LivenessTTL = DefaultLivenessTTL
	}
	if cfg.LivenessRefresh == 0 {
		cfg.LivenessRefresh = min(DefaultLivenessRefresh, cfg.LivenessTTL/3)
	}
	if cfg.LivenessRefresh >= cfg.LivenessTTL {
		return fmt.Errorf("fleetstate: PresenceConfig.LivenessRefresh %v must be less than LivenessTTL %v", cfg.LivenessRefresh, cfg.LivenessTTL)
	}
	if cfg.Queue == 0 {
		cfg.Queue = DefaultPresenceQueue
	}
	if cfg.Writers == 0 {
		cfg.Writers = DefaultPresenceWriters
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 5 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

// Close writes what is still queued (for at most the write timeout),
// deletes this relay's liveness key, so that the other relays stop
// locating devices here at once, and stops the watches. It does not close
// the NATS connection. Close is idempotent.
func (p *Presence) Close() error {
	p.closeOnce.Do(func() {
		deadline := time.Now().Add(p.timeout)
		for p.pending() && p.nc.IsConnected() && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		p.stopWrite()
		p.writers.Wait()
		p.stop()
		p.wg.Wait()
		if p.nc.IsConnected() {
			ctx, cancel := context.WithTimeout(context.Background(), p.timeout)
			if err := p.relays.Delete(ctx, p.self.String()); err != nil {
				p.log.Warn("presence: could not delete this relay's liveness key; the other relays see it lapse", "err", err)
			}
			cancel()
		}
	})
	return nil
}

// pending reports whether a write waits or runs.
func (p *Presence) pending() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, o := range p.mine {
		if o.dirty || o.busy {
			return true
		}
	}
	return false
}

// OnTaken sets f to be called with every device attached here that
// attached to another relay since (a newer record names that relay): the
// relay drops its stale session ([relay.Server.Moved]). f must not block.
func (p *Presence) OnTaken(f func(identity.ID)) {
	p.mu.Lock()
	p.onTaken = f
	p.mu.Unlock()
}

// Attached records that the device id attached to this relay.
func (p *Presence) Attached(id identity.ID) { p.want(id, true) }

// Detached records that the device id left this relay; its record is
// deleted only if it is still this relay's.
func (p *Presence) Detached(id identity.ID) { p.want(id, false) }

// want sets the state to write for id and queues it.
func (p *Presence) want(id identity.ID, attached bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	o := p.mine[id]
	if o == nil {
		if !attached {
			e, ok := p.entries[id]
			if !ok || e.relay != selfIndex {
				return // nothing of ours to delete
			}
			o = &own{rev: e.rev}
		} else {
			o = &own{}
		}
		p.mine[id] = o
	}
	o.attached = attached
	o.dirty = true
	p.enqueueLocked(id, o)
}

// enqueueLocked queues id unless it is queued or being written (its
// writer looks again when it is done). Past the queue's bound it sets
// overflow, for the scanner.
func (p *Presence) enqueueLocked(id identity.ID, o *own) {
	if o.queued || o.busy {
		return
	}
	select {
	case p.queue <- id:
		o.queued = true
	default:
		if !p.overflow {
			p.log.Warn("presence: write queue full; the devices beyond it are written after a scan", "queue", cap(p.queue))
		}
		p.overflow = true
	}
}

// Locate returns the relay holding the device id: this relay if the
// device is attached here, else the relay its latest record names, if
// that relay is live.
func (p *Presence) Locate(id identity.ID) (identity.ID, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if o := p.mine[id]; o != nil {
		if o.attached {
			return p.self, true
		}
		return identity.ID{}, false
	}
	e, ok := p.entries[id]
	if !ok || e.relay == selfIndex || !p.liveLocked(p.relayIDs[e.relay]) {
		return identity.ID{}, false
	}
	return p.relayIDs[e.relay], true
}

// Live returns the live relays, this one included, sorted by ID.
func (p *Presence) Live() []identity.ID {
	p.mu.Lock()
	out := []identity.ID{p.self}
	for r := range p.expires {
		if r != p.self && p.liveLocked(r) {
			out = append(out, r)
		}
	}
	p.mu.Unlock()
	slices.SortFunc(out, func(a, b identity.ID) int { return slices.Compare(a[:], b[:]) })
	return out
}

// liveLocked reports whether relay r's liveness has not lapsed; while
// NATS is lost, time stands still at the moment it was.
func (p *Presence) liveLocked(r identity.ID) bool {
	if r == p.self {
		return true
	}
	exp, ok := p.expires[r]
	if !ok {
		return false
	}
	now := time.Now()
	if !p.frozen.IsZero() {
		now = p.frozen
	}
	return now.Before(exp)
}

// writer writes the queued devices' records until ctx is done.
func (p *Presence) writer(ctx context.Context) {
	defer p.writers.Done()
	for {
		select {
		case <-ctx.Done():
			return
		case id := <-p.queue:
			p.write(id)
		}
	}
}

// write writes the wanted state of id, if it is not written yet and no
// other writer is writing it.
func (p *Presence) write(id identity.ID) {
	p.mu.Lock()
	o := p.mine[id]
	if o == nil {
		p.mu.Unlock()
		return
	}
	o.queued = false
	if !o.dirty || o.busy {
		p.mu.Unlock()
		return
	}
	o.busy, o.dirty = true, false
	attached, rev := o.attached, o.rev
	if e, ok := p.entries[id]; !attached && rev == 0 && ok && e.relay == selfIndex {
		rev = e.rev // a write whose answer was lost landed
	}
	p.mu.Unlock()

	var err error
	var newRev uint64
	if p.nc.IsConnected() {
		ctx, cancel := context.WithTimeout(context.Background(), p.timeout)
		if attached {
			newRev, err = p.presence.Put(ctx, id.String(), encode(presenceRecord{V: FormatVersion, Relay: p.self.String()}))
		} else if rev != 0 {
			err = p.presence.Delete(ctx, id.String(), jetstream.LastRevision(rev))
			if conflict(err) {
				err = nil // a newer record, another relay's: it stays
			}
		}
		cancel()
	} else {
		err = nats.ErrDisconnected
	}

	p.mu.Lock()
	o.busy = false
	taken := false
	switch {
	case err != nil:
		o.dirty = true
		if !p.retry {
			p.log.Debug("presence: write failed; retrying", "id", id.String(), "err", err)
		}
		p.retry = true
	case o.dirty:
		o.rev = newRev // 0 after a delete
		p.enqueueLocked(id, o)
	case !o.attached:
		delete(p.mine, id)
	default:
		o.rev = newRev
		taken = p.takenLocked(id, o)
	}
	f := p.onTaken
	p.mu.Unlock()
	if taken && f != nil {
		f(id)
	}
}

// takenLocked reports whether the device id, attached here and written,
// has a newer record that is not this relay's.
func (p *Presence) takenLocked(id identity.ID, o *own) bool {
	e, ok := p.entries[id]
	return ok && o.attached && !o.dirty && !o.busy && o.rev != 0 && e.rev > o.rev && e.relay != selfIndex
}

// scanner queues again the devices whose writes failed (every second) or
// did not fit the queue, until ctx is done.
func (p *Presence) scanner(ctx context.Context) {
	defer p.writers.Done()
	t := time.NewTicker(retryEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		p.mu.Lock()
		if !(p.overflow || p.retry) || !p.nc.IsConnected() {
			p.mu.Unlock()
			continue
		}
		p.overflow, p.retry = false, false
		var ids []identity.ID
		for id, o := range p.mine {
			if o.dirty && !o.busy && !o.queued {
				o.queued = true
				ids = append(ids, id)
			}
		}
		p.mu.Unlock()
		for _, id := range ids {
			select {
			case p.queue <- id:
			case <-ctx.Done():
				return
			}
		}
	}
}

// refreshLoop refreshes this relay's liveness key until ctx is done.
func (p *Presence) refreshLoop(ctx context.Context) {
	defer p.wg.Done()
	t := time.NewTicker(p.refresh)
	defer t.Stop()
	failed := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if !p.nc.IsConnected() {
			continue
		}
		wctx, cancel := context.WithTimeout(ctx, p.refresh)
		_, err := p.relays.Put(wctx, p.self.String(), p.liveValue)
		cancel()
		if err != nil && !failed && ctx.Err() == nil {
			p.log.Warn("presence: could not refresh this relay's liveness key; retrying", "err", err)
		}
		failed = err != nil
	}
}
