package natstest

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// TestKVSurvivesRestart: a JetStream key-value bucket on the server keeps
// its data across Stop and Restart, and a client reconnects by itself.
func TestKVSurvivesRestart(t *testing.T) {
	s := Start(t)
	nc, err := nats.Connect(s.URL(), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "test"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(ctx, "k", []byte("v1")); err != nil {
		t.Fatal(err)
	}
	s.Stop()
	short, cancelShort := context.WithTimeout(ctx, 500*time.Millisecond)
	defer cancelShort()
	if _, err := kv.Get(short, "k"); err == nil {
		t.Fatal("read from a stopped server")
	}
	s.Restart()
	for {
		e, err := kv.Get(ctx, "k")
		if err == nil {
			if string(e.Value()) != "v1" {
				t.Fatalf("value after restart: %q", e.Value())
			}
			return
		}
		if ctx.Err() != nil {
			t.Fatalf("no value after restart: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
