package device

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"time"

	"github.com/burrow-tunnel/burrow/internal/adminsock"
)

// The device's admin API, served on a Unix socket (see adminsock): the
// device subcommands change and read the running agent's state through it.
//
//	POST   /invites        {"role", "ttl" (Go duration), "name"} → {"invite", "expires"}
//	                       (ttl "" is DefaultInviteTTL; 0 or less is refused)
//	GET    /invites        → [PendingInvite]
//	DELETE /invites/{id}   → PendingInvite (404 if no pending invite has that ID)
//	GET    /users          → [User]
//	DELETE /users/{name|id}
//	GET    /status         → Status

// InviteRequest asks for an invite.
type InviteRequest struct {
	// Role is the role the client gets; "" is the only role defined, if
	// there is one.
	Role string `json:"role,omitempty"`
	// TTL is how long the invite stays valid, as a Go duration, more than
	// 0 and at most MaxInviteTTL; "" is DefaultInviteTTL.
	TTL string `json:"ttl,omitempty"`
	// Name is the user's name once paired; "" is user-<short ID>.
	Name string `json:"name,omitempty"`
}

// InviteAnswer is a new invite.
type InviteAnswer struct {
	Invite  string    `json:"invite"`
	Expires time.Time `json:"expires"`
	// ID names the invite in GET /invites and DELETE /invites/{id}.
	ID string `json:"id"`
}

// AdminHandler returns the handler of the admin API.
func (d *Device) AdminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /invites", func(w http.ResponseWriter, r *http.Request) {
		var req InviteRequest
		if err := adminsock.ReadJSON(r, &req); err != nil {
			http.Error(w, "bad request: "+err.Error(), http.StatusBadRequest)
			return
		}
		ttl, err := adminsock.ParseTTL(req.TTL)
		if err == nil && req.TTL != "" && ttl <= 0 {
			// Zero is the Go API's default; asked for, it is refused,
			// as a token's is.
			err = fmt.Errorf("%v: want more than 0 and at most %v", ttl, MaxInviteTTL)
		}
		if err != nil {
			http.Error(w, "ttl: "+err.Error(), http.StatusBadRequest)
			return
		}
		in, err := d.Invite(req.Role, ttl, req.Name)
		if err != nil {
			http.Error(w, err.Error(), errorStatus(err))
			return
		}
		adminsock.WriteJSON(w, InviteAnswer{Invite: in.String(), Expires: in.Expires, ID: inviteID(in.Secret.Verifier())})
	})
	mux.HandleFunc("GET /invites", func(w http.ResponseWriter, r *http.Request) {
		adminsock.WriteJSON(w, d.Invites())
	})
	mux.HandleFunc("DELETE /invites/{id}", func(w http.ResponseWriter, r *http.Request) {
		in, err := d.CancelInvite(r.PathValue("id"))
		switch {
		case errors.Is(err, ErrUnknownInvite):
			http.Error(w, err.Error(), http.StatusNotFound)
		case err != nil:
			http.Error(w, err.Error(), errorStatus(err))
		default:
			adminsock.WriteJSON(w, in)
		}
	})
	mux.HandleFunc("GET /users", func(w http.ResponseWriter, r *http.Request) {
		adminsock.WriteJSON(w, d.Users())
	})
	mux.HandleFunc("DELETE /users/{who}", func(w http.ResponseWriter, r *http.Request) {
		u, err := d.Revoke(r.PathValue("who"))
		switch {
		case errors.Is(err, ErrUnknownUser):
			http.Error(w, err.Error(), http.StatusNotFound)
		case err != nil:
			http.Error(w, err.Error(), errorStatus(err))
		default:
			adminsock.WriteJSON(w, u)
		}
	})
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		adminsock.WriteJSON(w, d.Status())
	})
	return mux
}

// errorStatus is the HTTP status of a refused admin request: the device's
// fault (its state cannot be saved) or the request's.
func errorStatus(err error) int {
	if errors.Is(err, ErrStateFull) {
		return http.StatusInsufficientStorage
	}
	if _, ok := errors.AsType[*StateError](err); ok {
		return http.StatusServiceUnavailable
	}
	return http.StatusBadRequest
}

// An AdminClient calls a running device's admin API.
type AdminClient struct{ c *adminsock.Client }

// NewAdminClient returns a client of the admin socket at path.
func NewAdminClient(path string) *AdminClient {
	return &AdminClient{c: adminsock.NewClient(path)}
}

// Invite asks for an invite.
func (a *AdminClient) Invite(ctx context.Context, req InviteRequest) (InviteAnswer, error) {
	var out InviteAnswer
	err := a.c.Call(ctx, "POST", "/invites", req, &out)
	return out, err
}

// Invites lists the pending invites.
func (a *AdminClient) Invites(ctx context.Context) ([]PendingInvite, error) {
	var out []PendingInvite
	err := a.c.Call(ctx, "GET", "/invites", nil, &out)
	return out, err
}

// CancelInvite cancels the pending invite with this ID.
func (a *AdminClient) CancelInvite(ctx context.Context, id string) (PendingInvite, error) {
	var out PendingInvite
	err := a.c.Call(ctx, "DELETE", "/invites/"+url.PathEscape(id), nil, &out)
	return out, err
}

// Users lists the users.
func (a *AdminClient) Users(ctx context.Context) ([]User, error) {
	var out []User
	err := a.c.Call(ctx, "GET", "/users", nil, &out)
	return out, err
}

// Revoke revokes a paired user.
func (a *AdminClient) Revoke(ctx context.Context, nameOrID string) (User, error) {
	var out User
	err := a.c.Call(ctx, "DELETE", "/users/"+url.PathEscape(nameOrID), nil, &out)
	return out, err
}

// Status returns the device's status.
func (a *AdminClient) Status(ctx context.Context) (Status, error) {
	var out Status
	err := a.c.Call(ctx, "GET", "/status", nil, &out)
	return out, err
}
