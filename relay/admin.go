package relay

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"time"

	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/internal/adminsock"
	"github.com/burrow-tunnel/burrow/relayproto"
)

// The relay's admin API, served on a Unix socket in its data directory
// (see adminsock), so that enrollment commands go through the running
// relay that owns the store:
//
//	POST   /tokens        {"uses", "ttl" (Go duration), "name"} → {"token"}
//	GET    /devices       → [EnrolledDevice] (the enrolled, then those only listed)
//	PUT    /devices/{id}/name  {"name"}      ("" removes it)
//	DELETE /devices/{id}

// TokenRequest asks for an enrollment token.
type TokenRequest struct {
	Uses int    `json:"uses"`
	TTL  string `json:"ttl,omitempty"`
	// Name, if not "", is the name of the device the token enrolls: the
	// token is then for one device (Uses 1).
	Name string `json:"name,omitempty"`
}

// AdminHandler returns the handler of the admin API of srv and its state.
// list, if not nil, is the relay's device list, whose devices GET /devices
// shows too. A state that cannot be reached answers 503 Service
// Unavailable.
func AdminHandler(srv *Server, st State, list *DeviceList) http.Handler {
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
		var tok string
		switch {
		case req.Name != "" && req.Uses != 1:
			err = fmt.Errorf("a token for %d devices cannot name them: a name is for one device (give --uses 1, or name each device once enrolled: burrow relay devices name ID NAME)", req.Uses)
		case req.Name != "":
			tok, err = st.CreateNamedToken(req.Name, ttl)
		default:
			tok, err = st.CreateToken(req.Uses, ttl)
		}
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
		devs = withListed(devs, list)
		for i := range devs {
			devs[i].Online, devs[i].LastSeen = srv.Online(devs[i].ID)
		}
		adminsock.WriteJSON(w, devs)
	})
	mux.HandleFunc("PUT /devices/{id}/name", func(w http.ResponseWriter, r *http.Request) {
		id, err := identity.ParseID(r.PathValue("id"))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		var req struct {
			Name string `json:"name"`
		}
		if err := adminsock.ReadJSON(r, &req); err != nil {
			http.Error(w, "bad request: "+err.Error(), http.StatusBadRequest)
			return
		}
		if err := st.SetName(id, req.Name); err != nil {
			status := stateStatus(err, http.StatusBadRequest)
			if errors.Is(err, ErrNotEnrolled) {
				status = http.StatusNotFound
				err = fmt.Errorf("%w: burrow relay devices lists the enrolled devices", err)
				if list != nil {
					if _, listed := list.Devices()[id]; listed {
						err = fmt.Errorf("%w: it is admitted by the device list %s: name it there, after its ID on its line (the relay reads the file again when it changes)", ErrNotEnrolled, list.path)
					}
				}
			}
			http.Error(w, err.Error(), status)
			return
		}
		w.WriteHeader(http.StatusNoContent)
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

// withListed returns devs, the enrolled devices, followed by the devices
// of list that are not enrolled, by ID; a listed device's name from the
// list is shown for an enrolled device that has none.
func withListed(devs []EnrolledDevice, list *DeviceList) []EnrolledDevice {
	if list == nil {
		return devs
	}
	listed := list.Devices()
	for i, d := range devs {
		if name, ok := listed[d.ID]; ok {
			if d.Name == "" {
				devs[i].Name = name
			}
			delete(listed, d.ID)
		}
	}
	for _, id := range slices.SortedFunc(maps.Keys(listed), func(a, b identity.ID) int { return bytes.Compare(a[:], b[:]) }) {
		devs = append(devs, EnrolledDevice{ID: id, Name: listed[id], Listed: true})
	}
	return devs
}

// DeviceNames returns the names of the devices of st and of list (which
// may be nil), as `relay devices` shows them: a name given at the relay
// first, then the list's. A state that cannot be read gives the list's
// names only.
func DeviceNames(st State, list *DeviceList) map[identity.ID]string {
	devs, _ := st.Devices()
	names := make(map[identity.ID]string)
	for _, d := range withListed(devs, list) {
		if d.Name != "" {
			names[d.ID] = d.Name
		}
	}
	return names
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

// CreateToken asks for an enrollment token; name, if not "", names the
// device it enrolls (uses must then be 1).
func (a *AdminClient) CreateToken(ctx context.Context, uses int, ttl time.Duration, name string) (string, error) {
	req := TokenRequest{Uses: uses, Name: name}
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

// SetName names an enrolled device ("" removes its name).
func (a *AdminClient) SetName(ctx context.Context, id identity.ID, name string) error {
	return a.c.Call(ctx, "PUT", "/devices/"+url.PathEscape(id.String())+"/name", map[string]string{"name": name}, nil)
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
