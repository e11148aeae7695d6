// Package promtest reads Prometheus metrics in tests: a GET, a scrape of a
// /metrics address, parsed with the text format's own parser (never by
// string matching), and the value of one sample. It is test code: no
// production package may import it.
package promtest

import (
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Get gets url on a connection of its own (no keep-alive, so that no
// idle connection outlives the test) and returns the status and body,
// failing t if the request fails.
func Get(t testing.TB, url string) (int, string) {
	t.Helper()
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := hc.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(body)
}

// Scrape gets url (a /metrics address) and parses it, failing t if the
// answer is not 200 or does not parse.
func Scrape(t testing.TB, url string) map[string]*dto.MetricFamily {
	t.Helper()
	status, body := Get(t, url)
	if status != http.StatusOK {
		t.Fatalf("GET %s: %d\n%s", url, status, body)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("the metrics of %s do not parse: %v\n%s", url, err, body)
	}
	return mfs
}

// Value is the value of the counter or gauge name whose labels include
// the given name, value pairs, and whether there is one.
func Value(mfs map[string]*dto.MetricFamily, name string, labels ...string) (float64, bool) {
next:
	for _, m := range mfs[name].GetMetric() {
		have := map[string]string{}
		for _, l := range m.GetLabel() {
			have[l.GetName()] = l.GetValue()
		}
		for i := 0; i+1 < len(labels); i += 2 {
			if have[labels[i]] != labels[i+1] {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue(), true
		case m.Gauge != nil:
			return m.Gauge.GetValue(), true
		}
	}
	return 0, false
}
