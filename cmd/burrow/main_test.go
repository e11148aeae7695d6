package main

import (
	"context"
	"os"
	"syscall"
	"testing"
	"time"
)

// TestNotifyStop: the first interrupt cancels the command's context; the
// second hurries a command that watches for it and ends any other at once;
// a third ends every command.
func TestNotifyStop(t *testing.T) {
	closed := func(c <-chan struct{}) bool {
		select {
		case <-c:
			return true
		case <-time.After(50 * time.Millisecond):
			return false
		}
	}
	done := func(ctx context.Context) bool { return closed(ctx.Done()) }
	for _, watch := range []bool{false, true} {
		sigc := make(chan os.Signal)
		exited := make(chan struct{})
		ctx, stop := notifyStop(context.Background(), sigc, func() { close(exited) })
		hurry := context.Background()
		if watch {
			hurry = hurryContext(ctx)
		}
		if done(ctx) || done(hurry) {
			t.Fatalf("watch=%v: stopping before any interrupt", watch)
		}
		sigc <- syscall.SIGTERM
		if !done(ctx) {
			t.Fatalf("watch=%v: the first interrupt did not cancel the context", watch)
		}
		if watch && done(hurry) {
			t.Fatal("the first interrupt hurried the command")
		}
		sigc <- os.Interrupt
		if watch {
			if !done(hurry) {
				t.Fatal("the second interrupt did not hurry the command")
			}
			if closed(exited) {
				t.Fatal("the second interrupt ended a command that watches for it")
			}
			sigc <- os.Interrupt
		}
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			t.Fatalf("watch=%v: the last interrupt did not end the process", watch)
		}
		stop()
	}
	if done(hurryContext(context.Background())) {
		t.Fatal("a hurry context without a stopper is cancelled")
	}
}
