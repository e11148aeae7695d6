package relaydash

import (
	"html"
	"strconv"
	"strings"
)

// The page is written by hand rather than with html/template: a template
// calls methods by reflection, which keeps the linker from dropping any
// exported method of the binary and costs the device agent, built from
// the same binary, a sixth of its size (see cmd/burrow's
// TestLinkerDropsUnusedMethods). Every value of a [view] goes through
// [page.text] or [page.attr], which escape it; markup is written only from
// the constants below.

// A page is HTML being written.
type page struct{ strings.Builder }

// markup writes trusted markup: only constants of this file.
func (p *page) markup(s string) { p.WriteString(s) }

// text writes s escaped, for an element's content.
func (p *page) text(s string) { p.WriteString(html.EscapeString(s)) }

// attr writes s escaped, for an attribute value in double quotes.
func (p *page) attr(s string) { p.WriteString(html.EscapeString(s)) }

func (p *page) int(n int) { p.WriteString(strconv.Itoa(n)) }

func (p *page) uint(n uint64) { p.WriteString(strconv.FormatUint(n, 10)) }

// code writes <code title="full">short</code>.
func (p *page) code(full, short string) {
	p.markup(`<code title="`)
	p.attr(full)
	p.markup(`">`)
	p.text(short)
	p.markup(`</code>`)
}

// cell writes a table cell of escaped text.
func (p *page) cell(s string) {
	p.markup("<td>")
	p.text(s)
	p.markup("</td>")
}

// renderPage writes the whole page, its live part included.
func renderPage(v view) string {
	var p page
	p.markup(`<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>burrow relay `)
	p.text(v.RelayShort)
	p.markup(`</title>
<link rel="stylesheet" href="assets/dash.css">
<script src="assets/dash.js" defer></script>
<noscript><meta http-equiv="refresh" content="10"></noscript>
</head>
<body>
<header>
<h1>burrow relay `)
	p.code(v.RelayID, v.RelayShort)
	p.markup(`</h1>
<p class="meta">Read-only. <span id="status">Updates every 2 s.</span> <a href="./">Reload</a></p>
</header>
<main id="live">`)
	writeLive(&p, v)
	p.markup("</main>\n</body>\n</html>\n")
	return p.String()
}

// renderLive writes the part of the page the script fetches again.
func renderLive(v view) string {
	var p page
	writeLive(&p, v)
	return p.String()
}

func writeLive(p *page, v view) {
	p.markup("\n<p class=\"meta\">State at ")
	p.text(v.Taken)
	p.markup(": ")
	p.int(v.DevicesTotal)
	p.markup(" devices and ")
	p.int(v.ClientsTotal)
	p.markup(" clients attached; ")
	p.text(v.Forwarded)
	p.markup(" forwarded since the relay started, ")
	p.uint(v.Dropped)
	p.markup(" packets dropped.</p>\n")
	writeAgents(p, "devices", "Devices online", "Device", "Name", "No device is attached.", v.Devices, v.DevicesTotal)
	writeSessions(p, v)
	writeAgents(p, "clients", "Clients attached", "Client", "Instance", "No client is attached.", v.Clients, v.ClientsTotal)
	writeChart(p, v.Traffic)
	writeRefusals(p, v)
}

// writeAgents writes the table of devices or of clients: first and second
// name their first two columns (the agent, then a device's name or a
// client's instance).
func writeAgents(p *page, id, title, first, second, empty string, rows []agentRow, total int) {
	p.markup("\n<section id=\"" + id + "\">\n<h2>" + title + " (")
	p.int(total)
	p.markup(")</h2>\n")
	writeShown(p, len(rows), total)
	if len(rows) == 0 {
		p.markup("<p class=\"empty\">" + empty + "</p>\n</section>\n")
		return
	}
	p.markup(`<div class="scroll"><table>
<thead><tr><th>` + first + `</th><th>` + second +
		`</th><th>Attached</th><th>Address</th><th>From it</th><th>To it</th><th>Dropped</th></tr></thead>
<tbody>`)
	for _, r := range rows {
		p.markup("\n<tr><td>")
		p.code(r.ID, r.Short)
		p.markup("</td>")
		if second == "Instance" {
			p.markup("<td><code>")
			p.text(r.Instance)
			p.markup("</code></td>")
		} else {
			p.cell(r.Name)
		}
		p.markup(`<td title="since `)
		p.attr(r.Since)
		p.markup(`">`)
		p.text(r.Age)
		p.markup("</td>")
		p.cell(r.Remote)
		p.cell(r.In)
		p.cell(r.Out)
		p.markup("<td>")
		p.uint(r.Dropped)
		p.markup("</td></tr>")
	}
	p.markup("\n</tbody></table></div>\n</section>\n")
}

// writeShown says that a list shows only its first rows, if it does.
func writeShown(p *page, shown, total int) {
	if shown < total {
		p.markup("<p class=\"note\">The first ")
		p.int(shown)
		p.markup(" by ID; the metrics (/metrics) count them all.</p>\n")
	}
}

func writeSessions(p *page, v view) {
	p.markup("\n<section id=\"sessions\">\n<h2>Sessions (")
	p.int(v.SessionsTotal)
	p.markup(")</h2>\n")
	writeShown(p, len(v.Sessions), v.SessionsTotal)
	if len(v.Sessions) == 0 {
		p.markup("<p class=\"empty\">The relay has forwarded packets for no client and device that are both attached.</p>\n")
	} else {
		p.markup(`<div class="scroll"><table>
<thead><tr><th>Client</th><th>Device</th><th>Path</th><th>Last relayed packet</th></tr></thead>
<tbody>`)
		for _, s := range v.Sessions {
			p.markup("\n<tr><td>")
			p.code(s.Client, s.ClientShort)
			p.markup("</td><td>")
			p.code(s.Device, s.DeviceShort)
			if s.DeviceName != "" {
				p.markup(" ")
				p.text(s.DeviceName)
			}
			class := "quiet"
			if s.Relayed {
				class = "relay"
			}
			p.markup(`</td><td class="` + class + `">`)
			p.text(s.Path)
			p.markup(`</td><td title="`)
			p.attr(s.LastRelayed)
			p.markup(`">`)
			p.text(s.LastAge)
			p.markup(" ago</td></tr>")
		}
		p.markup("\n</tbody></table></div>\n")
	}
	p.markup("<p class=\"note\">The relay sees only the packets it carries. A session with no relayed packet for ")
	p.text(v.Window)
	p.markup(" has moved to a direct path or is idle; the relay cannot tell which, so it says \"direct or idle\".</p>\n</section>\n")
}

func writeChart(p *page, c chart) {
	p.markup("\n<section id=\"traffic\">\n<h2>Traffic, last hour</h2>\n")
	if c.Minutes == 0 {
		p.markup("<p class=\"empty\">The first minute of traffic is being measured.</p>\n</section>\n")
		return
	}
	w, h := strconv.Itoa(c.Width), strconv.Itoa(c.Height)
	p.markup(`<svg class="chart" viewBox="0 0 ` + w + " " + h + `" preserveAspectRatio="none" role="img" aria-label="bytes forwarded per minute">
<line class="axis" x1="0" y1="` + h + `" x2="` + w + `" y2="` + h + `"></line>
`)
	for _, b := range c.Bars {
		p.markup(`<rect x="` + strconv.Itoa(b.X) + `" y="` + strconv.Itoa(b.Y) + `" width="` + strconv.Itoa(b.W) +
			`" height="` + strconv.Itoa(b.H) + `"><title>`)
		p.text(b.Title)
		p.markup("</title></rect>\n")
	}
	p.markup("</svg>\n<p class=\"meta\">Bytes forwarded per minute, the newest at the right: ")
	p.text(c.Total)
	p.markup(" in the last ")
	p.int(c.Minutes)
	p.markup(" minutes, ")
	p.text(c.Peak)
	p.markup(" in the busiest.</p>\n</section>\n")
}

func writeRefusals(p *page, v view) {
	p.markup("\n<section id=\"refusals\">\n<h2>Recent refusals</h2>\n")
	switch {
	case !v.RefusalsKnown:
		p.markup("<p class=\"empty\">This relay does not record refusals.</p>\n")
	case len(v.Refusals) == 0:
		p.markup("<p class=\"empty\">No agent was refused lately.</p>\n")
	default:
		p.markup(`<div class="scroll"><table>
<thead><tr><th>When</th><th>Address</th><th>Role</th><th>Agent</th><th>Reason</th></tr></thead>
<tbody>`)
		for _, r := range v.Refusals {
			p.markup(`
<tr><td title="`)
			p.attr(r.Time)
			p.markup(`">`)
			p.text(r.Age)
			p.markup(" ago</td>")
			p.cell(r.Remote)
			p.cell(r.Role)
			p.markup("<td>")
			if r.Agent != "" {
				p.code(r.Agent, r.AgentShort)
			}
			p.markup("</td>")
			p.cell(r.Reason)
			p.markup("</tr>")
		}
		p.markup("\n</tbody></table></div>\n")
	}
	p.markup("</section>\n")
}
