package device

import (
	"net/http"
	"reflect"
	"strings"
	"testing"

	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/session"
)

func TestAuthorize(t *testing.T) {
	gen := func() identity.ID {
		id, err := identity.Generate()
		if err != nil {
			t.Fatal(err)
		}
		return id.ID()
	}
	viewer, admin, stranger := gen(), gen(), gen()
	d := &Device{cfg: Config{
		Services: map[string]string{"rtsp": "127.0.0.1:554", "http": "127.0.0.1:80"},
		Clients:  map[identity.ID][]string{viewer: {"rtsp"}, admin: {AllServices}},
	}}
	tests := []struct {
		name    string
		client  identity.ID
		service string
		addr    string
		code    session.Code
		allowed []string
	}{
		{"viewer gets rtsp", viewer, "rtsp", "127.0.0.1:554", session.CodeOK, nil},
		{"viewer not http", viewer, "http", "", session.CodeNotAuthorized, nil},
		{"viewer unknown service lists only its own", viewer, "ssh", "", session.CodeUnknownService, []string{"rtsp"}},
		{"admin gets all", admin, "http", "127.0.0.1:80", session.CodeOK, nil},
		{"admin unknown service lists all", admin, "ssh", "", session.CodeUnknownService, []string{"http", "rtsp"}},
		{"stranger gets nothing", stranger, "rtsp", "", session.CodeNotAuthorized, nil},
		{"stranger learns no service names", stranger, "ssh", "", session.CodeNotAuthorized, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			addr, refusal := d.authorize(tc.client, tc.service)
			code := session.CodeOK
			var allowed []string
			if refusal != nil {
				code, allowed = refusal.Code, refusal.Allowed
			}
			if addr != tc.addr || code != tc.code || !reflect.DeepEqual(allowed, tc.allowed) {
				t.Fatalf("got (%q, %v, %v), want (%q, %v, %v)", addr, code, allowed, tc.addr, tc.code, tc.allowed)
			}
		})
	}
}

func TestConfigValidate(t *testing.T) {
	id, _ := identity.Generate()
	client, _ := identity.Generate()
	tests := []struct {
		name string
		cfg  Config
	}{
		{"no identity", Config{Services: map[string]string{"http": "127.0.0.1:80"}}},
		{"no services", Config{Identity: id}},
		{"bad service name", Config{Identity: id, Services: map[string]string{"HTTP": "127.0.0.1:80"}}},
		{"bad address", Config{Identity: id, Services: map[string]string{"http": "localhost"}}},
		{"client with undefined service", Config{Identity: id, Services: map[string]string{"http": "127.0.0.1:80"},
			Clients: map[identity.ID][]string{client.ID(): {"rtsp"}}}},
	}
	for _, tc := range tests {
		if err := tc.cfg.validate(); err == nil {
			t.Errorf("%s: validated", tc.name)
		}
	}
}

func TestConfigHandlers(t *testing.T) {
	id, _ := identity.Generate()
	page := ServeHTTP(http.NotFoundHandler())
	tests := []struct {
		name string
		cfg  Config
		want string // in the error; "" if valid
	}{
		{"handlers only", Config{Identity: id, Handlers: map[string]Handler{"admin": page}}, ""},
		{"role naming a handler", Config{Identity: id, Services: map[string]string{"rtsp": "127.0.0.1:554"},
			Handlers: map[string]Handler{"admin": page}, Roles: map[string][]string{"owner": {"admin", "rtsp"}}}, ""},
		{"name in both", Config{Identity: id, Services: map[string]string{"admin": "127.0.0.1:80"},
			Handlers: map[string]Handler{"admin": page}}, "both at address 127.0.0.1:80 (Services) and served in-process (Handlers)"},
		{"empty handler", Config{Identity: id, Handlers: map[string]Handler{"admin": {}}}, "make it with device.ServeConn or device.ServeHTTP"},
		{"bad handler name", Config{Identity: id, Handlers: map[string]Handler{"Admin": page}}, "handlers:"},
		{"role naming neither", Config{Identity: id, Handlers: map[string]Handler{"admin": page},
			Roles: map[string][]string{"owner": {"rtsp"}}}, `service "rtsp" is not defined under services (defined: admin)`},
	}
	for _, tc := range tests {
		err := tc.cfg.validate()
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: %v", tc.name, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%s: err = %v, want one saying %q", tc.name, err, tc.want)
		}
	}
}
