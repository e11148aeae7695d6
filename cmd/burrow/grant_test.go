package main

import (
	"strings"
	"testing"

	"github.com/burrow-tunnel/burrow/client"
)

func TestCheckGranted(t *testing.T) {
	kd := client.KnownDevice{Name: "cam1", Role: "viewer", Services: []string{"http", "rtsp"}}
	for _, tc := range []struct {
		kd      client.KnownDevice
		service string
		want    string // "" if allowed
	}{
		{kd, "http", ""},
		{kd, "rtsp", ""},
		{kd, "htp", `did you mean "http"?`},
		{kd, "RTSP", `did you mean "rtsp"?`},
		{kd, "ssh", `service "ssh" is not granted to this client by cam1: its pairing (role viewer) grants http, rtsp`},
		{client.KnownDevice{Name: "old"}, "ssh", ""}, // no services recorded: the device decides
	} {
		err := checkGranted(tc.kd, tc.service)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: %v, want it allowed", tc.service, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%s: %v, want %q", tc.service, err, tc.want)
		}
	}
}

func TestLoopbackPort(t *testing.T) {
	for in, want := range map[string]string{
		"8080":           "127.0.0.1:8080",
		"127.0.0.1:8080": "127.0.0.1:8080",
		":8080":          ":8080",
		"0.0.0.0:80":     "0.0.0.0:80",
		"[::1]:80":       "[::1]:80",
	} {
		if got := loopbackPort(in); got != want {
			t.Errorf("loopbackPort(%q) = %q, want %q", in, got, want)
		}
	}
}
