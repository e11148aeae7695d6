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
