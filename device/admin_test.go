package device

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestAdminInviteTTL: an invite asked for with a lifetime of 0 or less is
// refused, as a relay's enrollment token is, with what to give instead;
// it is not made with the default lifetime.
func TestAdminInviteTTL(t *testing.T) {
	h := (&Device{}).AdminHandler()
	for _, ttl := range []string{"0s", "0", "-1m"} {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, httptest.NewRequest("POST", "/invites", strings.NewReader(`{"ttl":"`+ttl+`"}`)))
		if w.Code != http.StatusBadRequest || !strings.Contains(w.Body.String(), "want more than 0 and at most 168h0m0s") {
			t.Errorf("ttl %q: %d %q, want it refused", ttl, w.Code, w.Body.String())
		}
	}
}
