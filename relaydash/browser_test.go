package relaydash

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/burrow-tunnel/burrow/internal/testing/tunneltest"
)

// chromium returns the path of a Chromium browser, or "" if there is none.
func chromium() string {
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "google-chrome-stable"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	return ""
}

// startBrowser starts a headless Chromium, alone in a fresh profile, that
// fetches nothing on its own (the tests may run with no network), and
// returns its context. The browser is closed, and waited for, when the
// test ends. Without Chromium the test is skipped, unless
// BURROW_REQUIRE_BROWSER=1 (as CI sets), which fails it.
func startBrowser(t *testing.T) context.Context {
	t.Helper()
	bin := chromium()
	if bin == "" {
		if os.Getenv("BURROW_REQUIRE_BROWSER") == "1" {
			t.Fatal("no Chromium found, and BURROW_REQUIRE_BROWSER=1: install it (apt-get install chromium)")
		}
		t.Skip("no Chromium found (apt-get install chromium); BURROW_REQUIRE_BROWSER=1 makes this a failure")
	}
	actx, acancel := chromedp.NewExecAllocator(context.Background(),
		chromedp.ExecPath(bin),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-extensions", true),
		chromedp.Flag("disable-default-apps", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.Flag("no-proxy-server", true),
	)
	bctx, bcancel := chromedp.NewContext(actx, chromedp.WithLogf(t.Logf))
	// Registered after TempDir's cleanup, so run before it: the browser
	// is gone before its profile is removed.
	t.Cleanup(func() {
		cctx, cancel := context.WithTimeout(bctx, 10*time.Second)
		defer cancel()
		if err := chromedp.Cancel(cctx); err != nil {
			t.Logf("closing the browser: %v", err)
		}
		bcancel()
		acancel() // kills the process if it is still there, and waits for it
	})
	if err := chromedp.Do(bctx); err != nil { // starts the browser
		t.Fatalf("start %s: %v", bin, err)
	}
	return bctx
}

// TestBrowser: in a real browser, the page loads and shows the attached
// device, and, without a reload, shows a second device once it attaches.
func TestBrowser(t *testing.T) {
	r := tunneltest.StartRelay(t)
	first := tunneltest.StartDevice(t, r, echoDevice(t))
	dash := newDash(t, Config{Relay: r.Server()})
	url := "http://" + tunneltest.HTTPServer(t, dash) + "/"

	b := startBrowser(t)
	ctx, cancel := context.WithTimeout(b, 60*time.Second)
	defer cancel()

	if err := chromedp.Do(ctx, chromedp.Navigate(url), chromedp.WaitVisible("#devices")); err != nil {
		t.Fatalf("load %s: %v", url, err)
	}
	text, err := chromedp.Run(ctx, chromedp.Text("#devices"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(text, first.ID().Short()) || !strings.Contains(text, "Devices online (1)") {
		t.Fatalf("the page shows %q, want the device %s", text, first.ID().Short())
	}
	// A mark that a reload would wipe.
	if _, err := chromedp.Run(ctx, chromedp.Evaluate[bool]("window.notReloaded = true")); err != nil {
		t.Fatal(err)
	}

	second := tunneltest.StartDevice(t, r, echoDevice(t))
	shown := `document.querySelector("#devices").innerText.includes(` + jsString(second.ID().Short()) + `)`
	if _, err := chromedp.Run(ctx, chromedp.Poll[bool](shown, chromedp.WithPollingInterval(100*time.Millisecond))); err != nil {
		text, _ := chromedp.Run(b, chromedp.Text("#devices"))
		t.Fatalf("the second device %s is not shown: %v; the page shows %q", second.ID().Short(), err, text)
	}
	state, err := chromedp.Run(ctx, chromedp.Evaluate[[]any](`[window.notReloaded === true, document.querySelector("#devices").innerText.includes("Devices online (2)"), document.querySelector("#status").textContent]`))
	if err != nil {
		t.Fatal(err)
	}
	if state[0] != true || state[1] != true || !strings.HasPrefix(state[2].(string), "Updated") {
		t.Fatalf("after the second device attached: not reloaded %v, two devices online %v, status %q", state[0], state[1], state[2])
	}
}

// jsString quotes s, an ID's letters and digits, as a JavaScript string.
func jsString(s string) string { return `"` + s + `"` }
