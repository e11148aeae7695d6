package main

import (
	"os/exec"
	"strings"
	"testing"
)

// TestLinkerDropsUnusedMethods: nothing in the binary calls a method by
// reflection (as text/template and html/template do), which would make the
// linker keep every exported method of every type in it, used or not: a
// sixth of the binary, and the difference between fitting the 12 MB of a
// small device's flash and not (see the README's benchmark).
func TestLinkerDropsUnusedMethods(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	out, err := exec.Command("go", "build", "-ldflags=-dumpdep", "-o", t.TempDir()+"/burrow", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%.2000s", err, out)
	}
	var culprits []string
	for line := range strings.Lines(string(out)) {
		if strings.Contains(line, "<ReflectMethod>") {
			culprits = append(culprits, strings.TrimSpace(line))
		}
	}
	if len(culprits) > 0 {
		t.Fatalf("these calls keep the linker from dropping unused methods:\n%s", strings.Join(culprits, "\n"))
	}
}

// TestNoMetricsBuild: -tags nometrics leaves the Prometheus client out of
// the binary, for small devices, and --metrics then says why it fails.
func TestNoMetricsBuild(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	out, err := exec.Command("go", "list", "-deps", "-tags", "nometrics", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	for line := range strings.Lines(string(out)) {
		if strings.Contains(line, "prometheus") || strings.Contains(line, "protobuf") {
			t.Errorf("-tags nometrics still depends on %s", strings.TrimSpace(line))
		}
	}
	bin := t.TempDir() + "/burrow"
	if out, err := exec.Command("go", "build", "-tags", "nometrics", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build -tags nometrics: %v\n%s", err, out)
	}
	out, err = exec.Command(bin, "relay", "--listen", "127.0.0.1:0", "--data", t.TempDir(), "--no-udp", "--metrics", "127.0.0.1:0").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "built without metrics (-tags nometrics)") {
		t.Errorf("relay --metrics in a nometrics build: %v, %s; want it to fail saying the build has no metrics", err, out)
	}
}
