package relay

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"time"

	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/internal/adminsock"
	"github.com/burrow-tunnel/burrow/relayproto"
)

// The relay's admin API, served on a Unix socket in its data directory
// (see adminsock), so that enrollment commands go through the running
// relay that owns the store:
//
//	POST   /tokens        {"uses", "ttl" (Go duration)} → {"token"}
//	GET    /devices       → [EnrolledDevice]
//	DELETE /devices/{id}

// TokenRequest asks for an enrollment token.
type TokenRequest struct {
	Uses int    `json:"uses"`
	TTL  string `json:"ttl,omitempty"`
}

// AdminHandler returns the handler of the admin API of srv and its state.
// A state that cannot be reached answers 503 Service Unavailable.
func AdminHandler(srv *Server, st State) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /tokens", func(w http.ResponseWriter, r *http.Request) {
		var req TokenRequest
		if err := adminsock.ReadJSON(r, &req); err != nil {
			http.Error(w, "bad request: "+err.Error(), http.StatusBadRequest)
			return
		}
		ttl, err := adminsock.ParseTTL(req.TTL)
		if err != nil {
			http.Error(w, "ttl: "+err.Error(), http.StatusBadRequest)
			return
		}
		tok, err := st.CreateToken(req.Uses, ttl)
		if err != nil {
			http.Error(w, err.Error(), stateStatus(err, http.StatusBadRequest))
			return
		}
		adminsock.WriteJSON(w, map[string]string{"token": tok})
	})
	mux.HandleFunc("GET /devices", func(w http.ResponseWriter, r *http.Request) {
		devs, err := st.Devices()
		if err != nil {
			http.Error(w, err.Error(), stateStatus(err, http.StatusInternalServerError))
			return
		}
		for i := range devs {
			devs[i].Online, devs[i].LastSeen = srv.Online(devs[i].ID)
		}
		adminsock.WriteJSON(w, devs)
	})
	mux.HandleFunc("DELETE /devices/{id}", func(w http.ResponseWriter, r *http.Request) {
		id, err := identity.ParseID(r.PathValue("id"))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		if err := st.Remove(id); err != nil {
			status := stateStatus(err, http.StatusInternalServerError)
			if errors.Is(err, ErrNotEnrolled) {
				status = http.StatusNotFound
			}
			http.Error(w, err.Error(), status)
			return
		}
		srv.Disconnect(id)
		w.WriteHeader(http.StatusNoContent)
	})
	return mux
}

// stateStatus is the HTTP status of the state's error err: 503 if the
// state is unavailable, otherwise status.
func stateStatus(err error, status int) int {
	if errors.Is(err, ErrStateUnavailable) {
		return http.StatusServiceUnavailable
	}
	return status
}

// An AdminClient calls a running relay's admin API.
type AdminClient struct{ c *adminsock.Client }

// NewAdminClient returns a client of the admin socket at path.
func NewAdminClient(path string) *AdminClient { return &AdminClient{c: adminsock.NewClient(path)} }

// CreateToken asks for an enrollment token.
func (a *AdminClient) CreateToken(ctx context.Context, uses int, ttl time.Duration) (string, error) {
	req := TokenRequest{Uses: uses}
	if ttl != 0 {
		req.TTL = ttl.String()
	}
	var out struct{ Token string }
	err := a.c.Call(ctx, "POST", "/tokens", req, &out)
	return out.Token, err
}

// Devices lists the enrolled devices.
func (a *AdminClient) Devices(ctx context.Context) ([]EnrolledDevice, error) {
	var out []EnrolledDevice
	err := a.c.Call(ctx, "GET", "/devices", nil, &out)
	return out, err
}

// Remove un-enrolls a device and disconnects it.
func (a *AdminClient) Remove(ctx context.Context, id identity.ID) error {
	return a.c.Call(ctx, "DELETE", "/devices/"+url.PathEscape(id.String()), nil, nil)
}

// Online reports whether the device id is attached, and when it was last
// seen if it is not (zero if the relay does not know).
func (s *Server) Online(id identity.ID) (bool, time.Time) { return s.routes.online(id) }

// Disconnect detaches the device id, if it is attached, with a go-away
// saying it was removed.
func (s *Server) Disconnect(id identity.ID) {
	if d := s.routes.device(id); d != nil {
		d.goAway(relayproto.GoAway{Reason: relayproto.GoAwayRemoved, Message: "this device is no longer enrolled on the relay"})
	}
}
