package main

import (
	"debug/elf"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// The packaging in dist/: systemd units checked by systemd-analyze, their
// command lines checked against the flags of this binary, and the relay's
// Dockerfile, whose build is run as written (no image is built: that needs
// a container engine).

// distDir is dist/ at the module's root.
const distDir = "../../dist"

// unitBinary is the path the units run burrow from.
const unitBinary = "/usr/local/bin/burrow"

// distUnits returns the systemd unit files in dist/.
func distUnits(t *testing.T) []string {
	t.Helper()
	units, err := filepath.Glob(filepath.Join(distDir, "*.service"))
	if err != nil || len(units) == 0 {
		t.Fatalf("no unit files in %s (%v)", distDir, err)
	}
	return units
}

// systemdAnalyze returns the path of systemd-analyze, or skips the test
// where it is missing, unless BURROW_REQUIRE_SYSTEMD=1 (as in CI) makes
// that a failure.
func systemdAnalyze(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("systemd-analyze")
	if err != nil {
		if os.Getenv("BURROW_REQUIRE_SYSTEMD") == "1" {
			t.Fatalf("systemd-analyze is missing and BURROW_REQUIRE_SYSTEMD=1: install systemd")
		}
		t.Skip("systemd-analyze is missing (apt install systemd)")
	}
	return p
}

// verifyUnits copies the units into a new directory, running the binary
// bin instead of unitBinary and applying edit to each, and returns what
// "systemd-analyze verify" says about them (an instance of each template
// is verified too) and its error.
func verifyUnits(t *testing.T, analyze, bin string, units []string, edit func(string) string) (string, error) {
	t.Helper()
	dir := t.TempDir()
	args := []string{"verify", "--man=no"}
	for _, u := range units {
		data, err := os.ReadFile(u)
		if err != nil {
			t.Fatal(err)
		}
		text := edit(strings.ReplaceAll(string(data), unitBinary, bin))
		dst := filepath.Join(dir, filepath.Base(u))
		if err := os.WriteFile(dst, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		args = append(args, dst)
		if strings.HasSuffix(dst, "@.service") {
			args = append(args, strings.TrimSuffix(dst, "@.service")+"@test.service")
		}
	}
	out, err := exec.Command(analyze, args...).CombinedOutput()
	return string(out), err
}

// TestDistUnitsVerify: systemd-analyze verify finds nothing to say about
// the units in dist/, and finds the mistake in a broken copy (so that its
// silence means something here).
func TestDistUnitsVerify(t *testing.T) {
	analyze := systemdAnalyze(t)
	bin := binary(t)
	units := distUnits(t)
	for _, want := range []string{"burrow-relay.service", "burrow-device.service", "burrow-device@.service"} {
		if !slices.ContainsFunc(units, func(u string) bool { return filepath.Base(u) == want }) {
			t.Errorf("dist/ has no %s", want)
		}
	}
	out, err := verifyUnits(t, analyze, bin, units, func(s string) string { return s })
	if err != nil || strings.TrimSpace(out) != "" {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
	out, _ = verifyUnits(t, analyze, bin, units, func(s string) string {
		return strings.Replace(s, "NoNewPrivileges=yes", "NoNewPrivilege=yes", 1)
	})
	if !strings.Contains(out, "Unknown key 'NoNewPrivilege'") {
		t.Fatalf("systemd-analyze verify did not report an unknown key in a broken unit:\n%s", out)
	}
}

// unitDirectives returns the values of the directive key in a unit file,
// in order.
func unitDirectives(t *testing.T, path, key string) []string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var vals []string
	for line := range strings.Lines(string(data)) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), key+"="); ok {
			vals = append(vals, v)
		}
	}
	return vals
}

// TestDistUnitCommands: each unit's command line parses with this
// binary's flags (cobra parses them all before it sees --help), a unit
// that stops the relay waits longer than the relay's drain, and a device
// unit reloads with SIGHUP.
func TestDistUnitCommands(t *testing.T) {
	bin := binary(t)
	for _, u := range distUnits(t) {
		name := filepath.Base(u)
		execs := unitDirectives(t, u, "ExecStart")
		if len(execs) != 1 {
			t.Fatalf("%s: %d ExecStart lines, want 1", name, len(execs))
		}
		args := strings.Fields(strings.ReplaceAll(execs[0], "%i", "test"))
		if args[0] != unitBinary {
			t.Fatalf("%s runs %s, want %s", name, args[0], unitBinary)
		}
		out, err := exec.Command(bin, append(args[1:], "--help")...).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "Usage:") {
			t.Errorf("%s: burrow %s --help: %v\n%s", name, strings.Join(args[1:], " "), err, out)
		}
		stop := unitDirectives(t, u, "TimeoutStopSec")
		if len(stop) != 1 {
			t.Fatalf("%s: want one TimeoutStopSec", name)
		}
		timeout, err := time.ParseDuration(stop[0])
		if err != nil {
			t.Fatalf("%s: TimeoutStopSec=%s: %v", name, stop[0], err)
		}
		switch args[1] {
		case "relay":
			drain := relayDrain(t, args[2:])
			if timeout <= drain {
				t.Errorf("%s: TimeoutStopSec=%v, not longer than the relay's drain (%v): systemd would kill it draining", name, timeout, drain)
			}
		case "device":
			if r := unitDirectives(t, u, "ExecReload"); !slices.Equal(r, []string{"/bin/kill -HUP $MAINPID"}) {
				t.Errorf("%s: ExecReload %q, want SIGHUP (the device reloads its configuration on it)", name, r)
			}
		default:
			t.Errorf("%s runs burrow %s, want relay or device", name, args[1])
		}
	}
	// A flag burrow does not have fails as the units' would.
	if out, err := exec.Command(bin, "relay", "--no-such-flag", "--help").CombinedOutput(); err == nil {
		t.Fatalf("burrow relay --no-such-flag --help succeeded:\n%s", out)
	}
}

// relayDrain returns the drain of "burrow relay" with args: its --drain,
// or the flag's default.
func relayDrain(t *testing.T, args []string) time.Duration {
	t.Helper()
	cmd := newRelayCmd(&globals{})
	if err := cmd.ParseFlags(args); err != nil {
		t.Fatalf("relay flags %q: %v", args, err)
	}
	d, err := cmd.Flags().GetDuration("drain")
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// dockerfile is the relay's Dockerfile, as the parts the tests check.
type dockerfile struct {
	build      string   // the RUN line that runs go build, without RUN
	user       string   // the final stage's USER
	volumes    []string // the final stage's VOLUMEs
	expose     []string // the final stage's EXPOSEd ports
	entrypoint []string
	cmd        []string
}

// parseDockerfile reads the instructions the tests check from path (one
// instruction per line, JSON arrays for ENTRYPOINT and CMD).
func parseDockerfile(t *testing.T, path string) dockerfile {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var d dockerfile
	for line := range strings.Lines(string(data)) {
		instr, arg, _ := strings.Cut(strings.TrimSpace(line), " ")
		switch strings.ToUpper(instr) {
		case "FROM":
			// A new stage: keep only the final one's settings.
			d = dockerfile{build: d.build}
		case "RUN":
			if strings.Contains(arg, "go build") {
				d.build = arg
			}
		case "USER":
			d.user = arg
		case "VOLUME":
			d.volumes = append(d.volumes, strings.Fields(arg)...)
		case "EXPOSE":
			d.expose = append(d.expose, strings.Fields(arg)...)
		case "ENTRYPOINT", "CMD":
			var v []string
			if err := json.Unmarshal([]byte(arg), &v); err != nil {
				t.Fatalf("%s %s: want a JSON array: %v", instr, arg, err)
			}
			if instr == "CMD" {
				d.cmd = v
			} else {
				d.entrypoint = v
			}
		}
	}
	return d
}

// shellWords splits a simple shell command line: words separated by
// spaces, double quotes grouping.
func shellWords(s string) []string {
	var words []string
	var w strings.Builder
	in, quoted := false, false
	for _, r := range s {
		switch {
		case r == '"':
			quoted, in = !quoted, true
		case r == ' ' && !quoted:
			if in {
				words = append(words, w.String())
				w.Reset()
			}
			in = false
		default:
			w.WriteRune(r)
			in = true
		}
	}
	if in {
		words = append(words, w.String())
	}
	return words
}

// TestDistDockerfile runs the relay image's build command as the
// Dockerfile writes it, checks that it makes a static, stripped binary
// (the final image has no libc), and that the final stage runs it as a
// user other than root, with its data directory a volume and its ports
// exposed. It does not build the image.
func TestDistDockerfile(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the burrow binary")
	}
	d := parseDockerfile(t, filepath.Join(distDir, "Dockerfile"))
	if u, _, _ := strings.Cut(d.user, ":"); u == "" || u == "root" || u == "0" {
		t.Errorf("final stage USER %q: want a user other than root", d.user)
	}
	for _, p := range []string{"443/tcp", "443/udp"} {
		if !slices.Contains(d.expose, p) {
			t.Errorf("final stage exposes %q, not %s", d.expose, p)
		}
	}
	if len(d.entrypoint) < 4 || d.entrypoint[1] != "relay" {
		t.Fatalf("ENTRYPOINT %q: want burrow relay --data DIR", d.entrypoint)
	}
	data := d.entrypoint[slices.Index(d.entrypoint, "--data")+1]
	if !slices.Contains(d.volumes, data) {
		t.Errorf("the relay's --data %s is not a VOLUME (%q)", data, d.volumes)
	}

	words := shellWords(d.build)
	var assigned []string // the command's own environment
	for len(words) > 0 && strings.Contains(words[0], "=") {
		assigned = append(assigned, words[0])
		words = words[1:]
	}
	if !slices.Contains(assigned, "CGO_ENABLED=0") {
		t.Errorf("the build runs without CGO_ENABLED=0: %s", d.build)
	}
	out := filepath.Join(t.TempDir(), "burrow")
	i := slices.Index(words, "-o")
	if len(words) < 3 || words[0] != "go" || words[1] != "build" || i < 0 || i+1 >= len(words) {
		t.Fatalf("build command %q: want go build … -o PATH …", d.build)
	}
	words[i+1] = out
	build := exec.Command(words[0], words[1:]...)
	build.Dir = "../.." // the Dockerfile's COPY . .
	build.Env = append(os.Environ(), assigned...)
	if msg, err := build.CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", d.build, err, msg)
	}
	checkStatic(t, out)

	// The image's command line, with the binary just built.
	args := append(append(slices.Clone(d.entrypoint[1:]), d.cmd...), "--help")
	if msg, err := exec.Command(out, args...).CombinedOutput(); err != nil || !strings.Contains(string(msg), "Usage:") {
		t.Errorf("burrow %s: %v\n%s", strings.Join(args, " "), err, msg)
	}
}

// checkStatic fails unless the ELF binary at path needs no dynamic loader
// or shared library and has no symbol table (-s).
func checkStatic(t *testing.T, path string) {
	t.Helper()
	f, err := elf.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP || p.Type == elf.PT_DYNAMIC {
			t.Errorf("%s has a %v program header: not a static binary", path, p.Type)
		}
	}
	if libs, err := f.ImportedLibraries(); err != nil || len(libs) != 0 {
		t.Errorf("%s needs shared libraries %q (%v)", path, libs, err)
	}
	if _, err := f.Symbols(); !errors.Is(err, elf.ErrNoSymbols) {
		t.Errorf("%s has a symbol table (%v): want it stripped (-ldflags -s)", path, err)
	}
}

// TestShellWords: the Dockerfile's build line splits as a shell would.
func TestShellWords(t *testing.T) {
	got := shellWords(`CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o /out/burrow ./cmd/burrow`)
	want := []string{"CGO_ENABLED=0", "go", "build", "-trimpath", "-ldflags", "-s -w", "-o", "/out/burrow", "./cmd/burrow"}
	if !slices.Equal(got, want) {
		t.Fatalf("got %q, want %q", got, want)
	}
	if got := shellWords(`a ""`); !slices.Equal(got, []string{"a", ""}) {
		t.Fatalf(`shellWords(a "") = %q, want an empty second word`, got)
	}
}

// TestReadmeInstall: the burrow commands of the README's Install section
// parse with this binary's flags, and the files of dist/ it names exist.
func TestReadmeInstall(t *testing.T) {
	bin := binary(t)
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(readme), "\n## Install\n")
	if !ok {
		t.Fatal(`README has no "## Install" section`)
	}
	section, _, _ = strings.Cut(section, "\n## ")
	cmds := regexp.MustCompile(`(?m)(?:^|-- |exec burrow-relay )burrow ((?:relay|device)\b[^#\n]*)`).FindAllStringSubmatch(section, -1)
	if len(cmds) < 4 {
		t.Fatalf("the Install section has %d burrow commands, want the relay's and the device's", len(cmds))
	}
	for _, m := range cmds {
		args := append(strings.Fields(m[1]), "--help")
		if out, err := exec.Command(bin, args...).CombinedOutput(); err != nil || !strings.Contains(string(out), "Usage:") {
			t.Errorf("README: burrow %s: %v\n%s", m[1], err, out)
		}
	}
	for _, m := range regexp.MustCompile(`dist/[\w.@-]*\w`).FindAllString(section, -1) {
		if _, err := os.Stat(filepath.Join("../..", m)); err != nil {
			t.Errorf("README names %s: %v", m, err)
		}
	}
}
