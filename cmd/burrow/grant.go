package main

import (
	"fmt"
	"net"
	"slices"
	"strings"

	"github.com/burrow-tunnel/burrow/client"
)

// checkGranted refuses, before anything listens, a service that the
// pairing record of kd does not grant: the device would refuse every
// tunnel to it. A misspelt name gets the closest one granted. A record
// with no services (made before pairing recorded them, or a device
// configured by ID) is not checked: the device decides.
func checkGranted(kd client.KnownDevice, service string) error {
	if len(kd.Services) == 0 || slices.Contains(kd.Services, service) {
		return nil
	}
	granted := strings.Join(kd.Services, ", ")
	role := ""
	if kd.Role != "" {
		role = " (role " + kd.Role + ")"
	}
	if near := closest(service, kd.Services); near != "" {
		return fmt.Errorf("unknown service %q on %s: did you mean %q? (services %s grants this client%s: %s)",
			service, kd.Name, near, kd.Name, role, granted)
	}
	return fmt.Errorf("service %q is not granted to this client by %s: its pairing%s grants %s; "+
		"ask the device's owner for a role with %s, then pair again (burrow pair)",
		service, kd.Name, role, granted, service)
}

// closest returns the name in names nearest to s, if it is near enough to
// be a misspelling of it (at most a third of its letters differ), else "".
func closest(s string, names []string) string {
	best, bestD := "", len(s)/3+1
	for _, n := range names {
		if d := editDistance(strings.ToLower(s), strings.ToLower(n)); d < bestD {
			best, bestD = n, d
		}
	}
	return best
}

// editDistance is the Levenshtein distance between a and b, in bytes.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// loopbackPort turns a bare port ("8080") into a loopback address
// ("127.0.0.1:8080"): a tunnel is for this machine unless an address says
// otherwise. Anything else is returned as it is.
func loopbackPort(listen string) string {
	if listen != "" && strings.Trim(listen, "0123456789") == "" {
		return net.JoinHostPort("127.0.0.1", listen)
	}
	return listen
}
