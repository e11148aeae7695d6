package layers

import (
	"os/exec"
	"slices"
	"strings"
	"testing"
)

const module = "github.com/burrow-tunnel/burrow"

// A rule constrains the imports of one package of the module.
type rule struct {
	pkg string // import path below the module
	// never: import paths (module-relative for burrow's own packages,
	// whole for others) that must not be among pkg's dependencies, direct
	// or indirect. A path matches itself and everything below it.
	never []string
	// only, if not nil: the burrow packages pkg may import directly, and
	// no other.
	only []string
	why  string
}

// rules is the architecture, bottom up. The wire packages know nothing of
// burrow but identity; the relay can never decrypt; each layer imports only
// those below it.
var rules = []rule{
	{pkg: "identity", only: []string{"internal/fileperm"}, why: "identity is the bottom layer"},
	{pkg: "relayproto", only: []string{"identity"}, why: "a wire package imports nothing of burrow but identity"},
	{pkg: "peerproto", only: []string{"identity"}, why: "a wire package imports nothing of burrow but identity"},
	{pkg: "fleet", only: []string{"identity"}, why: "a wire package imports nothing of burrow but identity"},
	{pkg: "udpsock", only: []string{"internal/udpgso"}, why: "the UDP socket knows nothing of burrow"},
	{pkg: "lan", only: []string{"identity"}, never: []string{"relay", "paths", "session", "client", "device", "agent"},
		why: "LAN discovery only finds devices by their tags; what follows is the roles' business"},
	{pkg: "internal/backoff", only: []string{}, why: "a leaf helper"},
	{pkg: "internal/udpgso", only: []string{}, why: "a leaf helper"},
	{pkg: "relaylink", only: []string{"identity", "fleet", "relayproto", "internal/backoff"}, never: []string{"github.com/quic-go/quic-go"},
		why: "the agent's link to the relay carries packets it cannot read"},
	{pkg: "relay", never: []string{"github.com/quic-go/quic-go", "session", "paths", "peerproto", "relaylink", "udpsock", "agent", "client", "device"},
		why: "the relay must never be able to decrypt: no QUIC, no session, no path layer"},
	{pkg: "relaydash", only: []string{"relay", "identity", "relayproto"}, never: []string{"github.com/quic-go/quic-go", "session", "paths", "client", "device", "agent"},
		why: "the relay's dashboard reads the relay, which must never be able to decrypt"},
	{pkg: "relaymetrics", only: []string{"relay", "identity", "relayproto"},
		never: []string{"github.com/quic-go/quic-go", "session", "paths", "peerproto", "relaylink", "udpsock", "agent", "client", "device"},
		why:   "the relay's metrics read the relay's counters and, like it, must never be able to decrypt"},
	{pkg: "fleetstate", never: []string{"github.com/quic-go/quic-go", "session", "paths", "client", "device", "agent"},
		why: "the fleet's shared state serves the relay, which must never be able to decrypt"},
	{pkg: "paths", never: []string{"github.com/quic-go/quic-go", "session", "agent", "client", "device", "relay"},
		why: "the path layer moves packets; the session above it is not its business"},
	{pkg: "session", never: []string{"agent", "client", "device", "relay"}, why: "the session serves the roles, not the other way round"},
	{pkg: "agent", never: []string{"client", "device", "relay"}, why: "the wiring every agent shares holds no role's policy"},
	{pkg: "client", never: []string{"device", "relay"}, why: "a client reaches devices only through the protocol"},
	{pkg: "device", never: []string{"client", "relay"}, why: "a device reaches clients only through the protocol"},
	{pkg: "libburrow", never: []string{"device", "relay"},
		why: "the C library is the client's: it reaches devices only through the protocol"},
	{pkg: "examples/httpdevice", only: []string{"device", "identity", "relaylink"}, never: []string{"client", "relay"},
		why: "the example device uses the device package's API, as firmware that embeds it would"},
	{pkg: "devicemetrics", only: []string{"device", "identity"}, never: []string{"client", "relay"},
		why: "a device's metrics read the device; they know nothing of the relay or of clients"},
}

// TestLayers checks every rule against the module's import graph as `go
// list` reports it.
func TestLayers(t *testing.T) {
	g := importGraph(t)
	for _, r := range rules {
		if _, ok := g[module+"/"+r.pkg]; !ok {
			t.Errorf("rule for %s: no such package in the module", r.pkg)
			continue
		}
		for _, v := range r.check(g) {
			t.Errorf("%s (%s)", v, r.why)
		}
	}
	for _, v := range noTestCode(g) {
		t.Error(v)
	}
}

// TestRulesCatchViolations: the rules report an import that breaks them,
// directly or through another package.
func TestRulesCatchViolations(t *testing.T) {
	g := importGraph(t)
	relay, relayproto := find(t, "relay"), find(t, "relayproto")
	if v := relay.check(g); len(v) != 0 {
		t.Fatalf("the module breaks the relay's rule already: %v", v)
	}
	tests := []struct {
		name     string
		r        rule
		pkg, imp string // the added import
		want     string // a violation that must be reported
	}{
		{"relay imports quic-go", relay, "relay", "github.com/quic-go/quic-go", "relay depends on github.com/quic-go/quic-go through relay → github.com/quic-go/quic-go"},
		{"relay imports the session", relay, "relay", module + "/session", "relay depends on session through relay → session"},
		{"relay imports paths", relay, "relay", module + "/paths", "relay depends on paths through relay → paths"},
		{"relay imports a package that imports quic-go", relay, "relay", module + "/client", "relay depends on github.com/quic-go/quic-go through relay → client → session → github.com/quic-go/quic-go"},
		{"relayproto imports paths", relayproto, "relayproto", module + "/paths", "relayproto imports paths"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			bad := make(map[string][]string, len(g))
			for p, imps := range g {
				bad[p] = slices.Clone(imps)
			}
			bad[module+"/"+tt.pkg] = append(bad[module+"/"+tt.pkg], tt.imp)
			if v := tt.r.check(bad); !slices.Contains(v, tt.want) {
				t.Errorf("violations %q, want among them %q", v, tt.want)
			}
		})
	}
	bad := map[string][]string{module + "/relay": {module + "/internal/testing/netns"}}
	if v := noTestCode(bad); len(v) == 0 {
		t.Error("a production package that imports test code is not reported")
	}
}

func find(t *testing.T, pkg string) rule {
	t.Helper()
	for _, r := range rules {
		if r.pkg == pkg {
			return r
		}
	}
	t.Fatalf("no rule for %s", pkg)
	return rule{}
}

// importGraph maps every package of the module, and every package they
// depend on, to its direct imports (test files left out).
func importGraph(t *testing.T) map[string][]string {
	t.Helper()
	cmd := exec.Command("go", "list", "-deps", "-f", "{{.ImportPath}}{{range .Imports}} {{.}}{{end}}", module+"/...")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	g := make(map[string][]string)
	for line := range strings.Lines(string(out)) {
		f := strings.Fields(line)
		if len(f) > 0 {
			g[f[0]] = f[1:]
		}
	}
	return g
}

// check returns the imports of r.pkg that break r.
func (r rule) check(g map[string][]string) []string {
	var bad []string
	pkg := module + "/" + r.pkg
	if r.only != nil {
		for _, imp := range g[pkg] {
			own, ok := strings.CutPrefix(imp, module+"/")
			if ok && !slices.Contains(r.only, own) {
				bad = append(bad, r.pkg+" imports "+own)
			}
		}
	}
	if len(r.never) == 0 {
		return bad
	}
	// Walk the dependencies breadth first, remembering how each was
	// reached, so that each banned package is reported once, by its
	// shortest chain.
	via := map[string]string{pkg: ""}
	order := []string{pkg}
	for i := 0; i < len(order); i++ {
		for _, imp := range g[order[i]] {
			if _, seen := via[imp]; !seen {
				via[imp] = order[i]
				order = append(order, imp)
			}
		}
	}
	for _, n := range r.never {
		full := n
		if !strings.Contains(n, ".") {
			full = module + "/" + n
		}
		for _, dep := range order {
			if dep == full || strings.HasPrefix(dep, full+"/") {
				bad = append(bad, r.pkg+" depends on "+n+" through "+chain(via, dep))
				break
			}
		}
	}
	slices.Sort(bad)
	return bad
}

// chain spells the import chain that reached dep.
func chain(via map[string]string, dep string) string {
	var c []string
	for p := dep; p != ""; p = via[p] {
		c = append(c, strings.TrimPrefix(p, module+"/"))
	}
	slices.Reverse(c)
	return strings.Join(c, " → ")
}

// noTestCode reports production packages that import the test
// infrastructure under internal/testing.
func noTestCode(g map[string][]string) []string {
	var bad []string
	for p, imps := range g {
		if !strings.HasPrefix(p, module+"/") || strings.HasPrefix(p, module+"/internal/testing/") {
			continue
		}
		for _, imp := range imps {
			if strings.HasPrefix(imp, module+"/internal/testing/") {
				bad = append(bad, strings.TrimPrefix(p, module+"/")+" imports test code "+strings.TrimPrefix(imp, module+"/"))
			}
		}
	}
	slices.Sort(bad)
	return bad
}
