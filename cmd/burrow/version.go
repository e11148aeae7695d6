package main

import (
	"fmt"
	"runtime"
	"runtime/debug"

	"github.com/spf13/cobra"
)

// version, when set at build time with -ldflags "-X main.version=…",
// replaces the module version from the build info.
var version = ""

// burrowVersion is this burrow's version: -X main.version's, else the
// module version from the build info, else "(devel)".
func burrowVersion() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		return bi.Main.Version
	}
	return "(devel)"
}

// versionInfo says which burrow this is: the module version (for a build
// of a checkout, the pseudo-version go build derives from its commit, or
// "(devel)"), the VCS commit it was built from, whether
// the tree had changes not committed, when that commit was made, and the
// Go version. "go build" in a git checkout records the commit (unless
// -buildvcs=false); a module download (go install …@v1.2.3) records the
// version instead.
// "burrow version" and "burrow --version" print it after "burrow version "
// (cobra's own format for --version, which needs no text/template: see
// TestLinkerDropsUnusedMethods).
func versionInfo() string {
	v, commit, modified, when := burrowVersion(), "", false, ""
	goVersion := runtime.Version()
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				commit = s.Value
			case "vcs.modified":
				modified = s.Value == "true"
			case "vcs.time":
				when = s.Value
			}
		}
		goVersion = bi.GoVersion
	}
	line := v
	if commit != "" {
		line += ", commit " + commit
		if modified {
			line += " (with changes not committed)"
		}
		if when != "" {
			line += ", committed " + when
		}
	}
	return line + ", " + goVersion
}

func newVersionCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print burrow's version and the commit it was built from",
		Long: `Print burrow's version (the module version; for a build of a checkout, the
pseudo-version Go derives from its commit, or "(devel)"), the VCS commit it was built from, whether the checkout had
changes not committed, when that commit was made, and the Go version.
"burrow --version" prints the same line.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, err := fmt.Fprintf(g.stdout, "%s version %s\n", cmd.Root().DisplayName(), versionInfo())
			return err
		},
	}
}
