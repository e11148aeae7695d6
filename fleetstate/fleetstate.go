// Package fleetstate keeps the enrollment state that a fleet of relays
// shares in NATS JetStream key-value buckets: the enrolled devices, the
// enrollment tokens, and when devices were removed. A [State] is a
// [relay.State], interchangeable with the relay's own on-disk
// [relay.Store] and with the same meaning: a token issued through one
// relay enrolls a device at any other, a single-use token is spent exactly
// once across the whole fleet, and a device removed through one relay is
// disconnected by every relay it is attached to. A [Presence] is a
// [relay.Presence]: it records which relay holds each device and which
// relays are alive, so that any relay can locate a device. The fleet map
// is kept here too ([FleetMap]), as signed bytes.
//
// It does not route, hold sessions or speak the relay protocol (that is
// package relay, which it serves), and it imports nothing that could
// decrypt tunnel traffic. The fleet key and the map's signature are not
// its business (package fleet).
//
// # Storage format, version 1
//
// Four buckets, each a JetStream stream of the usual key-value layout
// (stream KV_<bucket>, subjects $KV.<bucket>.<key>), history 1, with
// AllowDirect off (see [Open]) and metadata "burrow_format": "1":
//
//	burrow_devices   key: the device ID (lowercase base32, as identity.ID prints it)
//	                 value: {"v":1,"enrolled":T,"name":S}   enrolled since T, named S ("name" optional)
//	                        {"v":1,"removed":T}             removed at T, not enrolled
//	burrow_tokens    key: lowercase hex of relay.EnrollTokenHash(token); the token itself is never stored
//	                 value: {"v":1,"uses":N,"created":T,"expires":T,"name":S}   N uses left; S ("name",
//	                        optional, only with N 1) names the device it enrolls
//	burrow_presence  key: the device ID
//	                 value: {"v":1,"relay":ID}    the device is attached to relay ID
//	burrow_relays    key: a relay ID; the bucket's MaxAge is the liveness TTL (6s by default)
//	                 value: {"v":1,"ttl_ms":N}    the relay is live for N ms after this write
//
// Presence is written on attach and detach only, never periodically per
// device. The KV revision of a device's presence record is the attach's
// epoch: an attach is a plain put, so the latest attach, wherever it is,
// wins, and the relay it replaced drops its stale session when its watch
// sees a newer revision than its own. A detach deletes the record only
// by compare-and-swap on the revision this relay wrote, so that it never
// erases a newer attach elsewhere. A record counts only while its relay's
// liveness key does: each relay rewrites its own every 2s by default and
// deletes it when it stops; every relay times the keys itself (from when
// it saw each write, plus its ttl_ms), so that a relay that died unheard
// lapses even if NATS sends no marker of the key's expiry. Deleted
// presence records leave a delete marker until the device's next attach.
//
// Times are RFC 3339 in UTC, from the clock of the relay that wrote them:
// whether a token was issued after a device's removal is decided by the
// clocks of the two relays involved, so keep the fleet's clocks in step
// (NTP). A device's one key holds both its enrollment and its removal, so
// that removing a device is one compare-and-swap and every relay's watch
// of the bucket sees it as one change. A spent token
// is deleted (a delete marker). Every change that depends on what was read
// is a compare-and-swap on the key's revision (KeyValue.Update with the
// revision read, or Delete with LastRevision): two relays spending the
// last use of a token cannot both succeed.
//
// "v" is the version of the record; a reader refuses a record of a
// version it does not know (the device counts as not enrolled, the token
// is refused) rather than guess, and refuses to open buckets whose
// burrow_format is not its own. A change of meaning takes a new
// version; a new optional field does not.
package fleetstate

import (
	"context"
	"encoding/json"
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

// The buckets and the storage format (see the package comment).
const (
	DevicesBucket = "burrow_devices"
	TokensBucket  = "burrow_tokens"
	FormatVersion = 1
	formatKey     = "burrow_format"
)

// Config configures a [State].
type Config struct {
	// Conn is the connection to NATS (with JetStream). Required. The
	// State uses it but does not close it. It should reconnect without
	// end (nats.MaxReconnects(-1)): the State resumes by itself whenever
	// the connection does.
	Conn *nats.Conn

	// Replicas is how many copies of each bucket NATS keeps, when the
	// State creates it (a bucket that exists keeps its own setting). Zero
	// means 1; a three-node NATS cluster wants 3.
	Replicas int

	// Timeout bounds each operation on NATS (one enrollment, one token,
	// one removal). Zero means 5s.
	Timeout time.Duration

	// Logger receives a line when the state is lost and found again, and
	// for records it cannot read. Nil discards logs.
	Logger *slog.Logger
}

// A State is the fleet's enrollment state in NATS, with a copy of the
// enrolled devices in memory that a watch of the devices bucket keeps
// current. It fails closed: while NATS is unreachable, Enrolled answers
// from that copy, and everything that needs NATS fails with an error that
// wraps [relay.ErrStateUnavailable]; when NATS is back, the watch starts
// over and applies whatever changed meanwhile. A State is safe for
// concurrent use.
type State struct {
	nc      *nats.Conn
	devices jetstream.KeyValue
	tokens  jetstream.KeyValue
	timeout time.Duration
	log     *slog.Logger

	mu       sync.Mutex
	enrolled map[identity.ID]int64  // device → enrolled since, in Unix nanoseconds (0: unknown); guarded by mu
	names    map[identity.ID]string // of the enrolled devices that have one; guarded by mu
	onRemove func(identity.ID)      // guarded by mu

	stop context.CancelFunc
	done chan struct{} // closed when the watch loop has returned
}

// Open opens the fleet's state on cfg.Conn, creating its buckets if they
// do not exist, and loads the enrolled devices; it fails if NATS does not
// answer in time. A cluster that cannot hold the buckets yet, or whose
// JetStream does not answer yet (its servers still joining), is waited
// for, up to placementWait. Close stops it.
//
// Reads that a compare-and-swap depends on go to the stream's leader: a
// key-value bucket normally has AllowDirect on, and nats.go then reads
// with a direct get ($JS.API.DIRECT.GET), which any replica may answer,
// possibly with a value the leader has already replaced. Open turns
// AllowDirect off on both buckets before it takes its handles, so that
// KeyValue.Get reads through $JS.API.STREAM.MSG.GET, which only the
// leader answers. (A stale read could not spend a token twice, since
// the write that follows is checked by the leader against the revision
// read; it would only fail that write, or call a token used up that
// was not.)
func Open(ctx context.Context, cfg Config) (*State, error) {
	if cfg.Conn == nil {
		return nil, errors.New("fleetstate: Config.Conn is required")
	}
	if cfg.Replicas < 0 || cfg.Timeout < 0 {
		return nil, errors.New("fleetstate: negative Replicas or Timeout in Config")
	}
	s := &State{nc: cfg.Conn, timeout: cfg.Timeout, log: cfg.Logger, enrolled: make(map[identity.ID]int64), names: make(map[identity.ID]string), done: make(chan struct{})}
	if s.timeout == 0 {
		s.timeout = 5 * time.Second
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	js, err := jetstream.New(cfg.Conn)
	if err != nil {
		return nil, s.fail("open fleet state", err)
	}
	if s.devices, err = openBucket(ctx, s.timeout, s.log, js, DevicesBucket, cfg.Replicas); err != nil {
		return nil, s.fail("open fleet state", err)
	}
	if s.tokens, err = openBucket(ctx, s.timeout, s.log, js, TokensBucket, cfg.Replicas); err != nil {
		return nil, s.fail("open fleet state", err)
	}
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	wctx, stop := context.WithCancel(context.Background())
	s.stop = stop
	loaded := make(chan struct{})
	go s.watchLoop(wctx, loaded)
	select {
	case <-loaded:
		return s, nil
	case <-ctx.Done():
		s.Close()
		return nil, s.fail("load enrolled devices", ctx.Err())
	}
}

// openBucket returns a handle on bucket, creating the bucket if needed,
// that reads from the stream's leader (see Open).
func openBucket(ctx context.Context, timeout time.Duration, log *slog.Logger, js jetstream.JetStream, bucket string, replicas int) (jetstream.KeyValue, error) {
	return openBucketConfig(ctx, timeout, log, js, jetstream.KeyValueConfig{
		Bucket:      bucket,
		Description: "burrow relay fleet state, see package fleetstate",
		Replicas:    replicas,
	})
}

// placementWait is how long opening a bucket waits for the NATS cluster to
// be able to hold it. The servers of a cluster that is starting join its
// JetStream over some seconds; until enough of them have, creating a
// bucket with replicas fails with "no suitable peers for placement", or
// gets no answer, and a relay started with the cluster would give up.
const placementWait = 30 * time.Second

// openBucketConfig is openBucket for a bucket created, if needed, with
// cfg (file storage and the format's metadata added). Each try has
// timeout; tries that fail because the cluster cannot hold the bucket yet
// (notReady) are made again, for up to placementWait.
func openBucketConfig(ctx context.Context, timeout time.Duration, log *slog.Logger, js jetstream.JetStream, cfg jetstream.KeyValueConfig) (jetstream.KeyValue, error) {
	giveUp := time.Now().Add(placementWait)
	wait := 100 * time.Millisecond
	for warned := false; ; {
		tctx, cancel := context.WithTimeout(ctx, timeout)
		kv, err := openBucketOnce(tctx, js, cfg)
		cancel()
		if err == nil || !notReady(err) || time.Now().Add(wait).After(giveUp) {
			return kv, err
		}
		if !warned {
			log.Warn("the NATS cluster cannot hold the bucket yet (are its servers still joining?); trying again", "bucket", cfg.Bucket, "err", err)
			warned = true
		}
		select {
		case <-ctx.Done():
			return nil, err
		case <-time.After(wait):
		}
		wait = min(2*wait, 2*time.Second)
	}
}

// jsErrClusterNoPeers and jsErrClusterNotAvailable are JetStream's error
// codes for a stream that no set of servers can hold yet, and for a
// cluster that is not ready.
const (
	jsErrClusterNoPeers      = 10005
	jsErrClusterNotAvailable = 10008
)

// notReady reports whether err says that the cluster cannot hold a bucket
// yet, or that its JetStream did not answer in time, which passes as its
// servers join.
func notReady(err error) bool {
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		return apiErr.ErrorCode == jsErrClusterNoPeers || apiErr.ErrorCode == jsErrClusterNotAvailable
	}
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout)
}

func openBucketOnce(ctx context.Context, js jetstream.JetStream, cfg jetstream.KeyValueConfig) (jetstream.KeyValue, error) {
	bucket := cfg.Bucket
	kv, err := js.KeyValue(ctx, bucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		// Two relays starting at once may both create it; the same
		// configuration twice is not an error, and a bucket created
		// otherwise meanwhile is used as it is.
		cfg.Storage = jetstream.FileStorage
		cfg.Metadata = map[string]string{formatKey: fmt.Sprint(FormatVersion)}
		kv, err = js.CreateKeyValue(ctx, cfg)
		if errors.Is(err, jetstream.ErrBucketExists) {
			kv, err = js.KeyValue(ctx, bucket)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("bucket %s: %w", bucket, err)
	}
	str, err := js.Stream(ctx, "KV_"+bucket)
	if err != nil {
		return nil, fmt.Errorf("bucket %s: %w", bucket, err)
	}
	scfg := str.CachedInfo().Config
	if v := scfg.Metadata[formatKey]; v != "" && v != fmt.Sprint(FormatVersion) {
		return nil, fmt.Errorf("bucket %s holds burrow_format %s, this relay knows only %d: upgrade the relay", bucket, v, FormatVersion)
	}
	if !scfg.AllowDirect {
		return kv, nil
	}
	scfg.AllowDirect = false
	if _, err := js.UpdateStream(ctx, scfg); err != nil {
		return nil, fmt.Errorf("bucket %s: turn direct reads off: %w", bucket, err)
	}
	// The handle takes the setting from the stream's configuration when
	// it is made: make it again.
	if kv, err = js.KeyValue(ctx, bucket); err != nil {
		return nil, fmt.Errorf("bucket %s: %w", bucket, err)
	}
	return kv, nil
}

// Close stops the watch and waits for it. It does not close the NATS
// connection. Close is idempotent.
func (s *State) Close() error {
	s.stop()
	<-s.done
	return nil
}

// OnRemove sets f to be called with every device whose removal the watch
// sees, whichever relay removed it: the relay disconnects it
// ([relay.Server.Disconnect]). f must not block.
func (s *State) OnRemove(f func(identity.ID)) {
	s.mu.Lock()
	s.onRemove = f
	s.mu.Unlock()
}

// Enrolled reports whether the device id is enrolled, from the copy in
// memory: it answers while NATS is unreachable too.
func (s *State) Enrolled(id identity.ID) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.enrolled[id]
	return ok
}

// Devices returns the enrolled devices, oldest enrollment first, from the
// copy in memory.
func (s *State) Devices() ([]relay.EnrolledDevice, error) {
	s.mu.Lock()
	out := make([]relay.EnrolledDevice, 0, len(s.enrolled))
	for id, t := range s.enrolled {
		out = append(out, relay.EnrolledDevice{ID: id, Enrolled: fromUnixNano(t), Name: s.names[id]})
	}
	s.mu.Unlock()
	slices.SortFunc(out, func(a, b relay.EnrolledDevice) int { return a.Enrolled.Compare(b.Enrolled) })
	return out, nil
}

var _ relay.State = (*State)(nil)

// op returns the context of one operation on NATS, or an error that wraps
// [relay.ErrStateUnavailable] at once if the connection is down: a
// request would only wait for the timeout.
func (s *State) op(what string) (context.Context, context.CancelFunc, error) {
	if !s.nc.IsConnected() {
		return nil, nil, s.fail(what, nats.ErrDisconnected)
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
	return ctx, cancel, nil
}

// fail wraps err, an error of NATS, for what: as unavailable if NATS
// could not be reached, which says what the relay does meanwhile and what
// to do.
func (s *State) fail(what string, err error) error {
	if !unreachable(err) && s.nc.IsConnected() {
		return fmt.Errorf("%s: fleet state in NATS: %w", what, err)
	}
	return fmt.Errorf("%s: %w: NATS is unreachable (%v): until it is back, the relay admits only the devices it knows to be enrolled and enrolls, issues tokens for and removes none; check the NATS servers (burrow relay --nats) and the network to them",
		what, relay.ErrStateUnavailable, err)
}

// unreachable reports whether err says that NATS did not answer.
func unreachable(err error) bool {
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout) ||
		errors.Is(err, nats.ErrNoResponders) || errors.Is(err, jetstream.ErrNoStreamResponse) ||
		errors.Is(err, nats.ErrConnectionClosed) || errors.Is(err, nats.ErrDisconnected) ||
		errors.Is(err, nats.ErrConnectionReconnecting)
}

// conflict reports whether err is a compare-and-swap that lost: the key
// changed since it was read.
func conflict(err error) bool {
	if errors.Is(err, jetstream.ErrKeyRevisionMismatch) || errors.Is(err, jetstream.ErrKeyExists) {
		return true
	}
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
		apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant)
}

// deviceRecord is the value of a device's key (format version 1).
type deviceRecord struct {
	V        int       `json:"v"`
	Enrolled time.Time `json:"enrolled,omitzero"`
	Removed  time.Time `json:"removed,omitzero"`
	Name     string    `json:"name,omitempty"` // optional: a relay that does not know it ignores it
}

// tokenRecord is the value of a token's key (format version 1).
type tokenRecord struct {
	V       int       `json:"v"`
	Uses    int       `json:"uses"` // left
	Created time.Time `json:"created"`
	Expires time.Time `json:"expires"`
	Name    string    `json:"name,omitempty"` // of the device it enrolls; optional, as in deviceRecord
}

// decode parses a record, and refuses one of another format version.
func decode[T deviceRecord | tokenRecord | presenceRecord | livenessRecord](b []byte) (T, error) {
	var rec T
	if err := json.Unmarshal(b, &rec); err != nil {
		return rec, fmt.Errorf("unreadable record: %w", err)
	}
	var v int
	switch r := any(rec).(type) {
	case deviceRecord:
		v = r.V
	case tokenRecord:
		v = r.V
	case presenceRecord:
		v = r.V
	case livenessRecord:
		v = r.V
	}
	if v != FormatVersion {
		return rec, fmt.Errorf("record of format version %d, this relay knows only %d: upgrade the relay", v, FormatVersion)
	}
	return rec, nil
}

func encode(v any) []byte {
	b, _ := json.Marshal(v)
	return b
}

// unixNano and fromUnixNano keep a time in 8 bytes, as the copy of the
// enrolled devices holds one per device of the fleet; the zero time is 0.
func unixNano(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func fromUnixNano(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n).UTC()
}
