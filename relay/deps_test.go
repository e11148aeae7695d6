package relay

import (
	"os/exec"
	"strings"
	"testing"
)

// TestCannotDecrypt guards the relay's promise that it cannot read tunnel
// traffic: nothing it imports (tests aside) is QUIC, the end-to-end
// session or the agent's path layer.
func TestCannotDecrypt(t *testing.T) {
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command to list the relay's imports")
	}
	out, err := exec.Command(gobin, "list", "-deps", ".").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	deps := strings.Fields(string(out))
	if len(deps) < 10 {
		t.Fatalf("go list -deps found only %v", deps)
	}
	for _, d := range deps {
		for _, banned := range []string{
			"github.com/quic-go",
			"github.com/burrow-tunnel/burrow/session",
			"github.com/burrow-tunnel/burrow/paths",
		} {
			if d == banned || strings.HasPrefix(d, banned+"/") {
				t.Errorf("the relay imports %s", d)
			}
		}
	}
}
