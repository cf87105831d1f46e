package policy

import "strings"

// sharedZones are zones where anyone gets a name of their own by signing up
// — tunnels to a laptop, request catchers, out-of-band interaction
// servers — that the Public Suffix List does not carry. Their subdomains
// belong to strangers exactly as github.io's do, and they are built to
// receive what a sandbox sends: an allow rule covering their subdomains is
// an exfiltration endpoint (THREATS D5). For the breadth judgement each
// zone counts as a public suffix, so the floors standard and strict refuse
// `*.webhook.site` as they refuse `*.github.io`; an exact name under one
// (a tunnel the owner runs) stays narrow. Written like the PSL: "*.zone"
// makes every label under zone a suffix too (regional front ends,
// xxx.usw2.devtunnels.ms). Zones the PSL already lists (ngrok.io,
// trycloudflare.com, telebit.io, tunnelmole.net) are not repeated.
var sharedZones = []string{
	// Tunnels that give a public name to anyone's local server.
	"loca.lt", "localtunnel.me", "serveo.net", "serveousercontent.com", "localhost.run", "lhr.life",
	"pagekite.me", "bore.pub", "pinggy.link", "pinggy.online", "free.pinggy.net", "loophole.site",
	"devtunnels.ms", "*.devtunnels.ms",
	// Request catchers and webhook inspectors.
	"webhook.site", "requestcatcher.com", "pipedream.net", "m.pipedream.net", "requestbin.net",
	"beeceptor.com", "requestrepo.com",
	// Out-of-band interaction servers (DNS and HTTP callbacks).
	"interact.sh", "interactsh.com", "oast.fun", "oast.pro", "oast.live", "oast.site", "oast.online",
	"oast.me", "burpcollaborator.net", "burpcollaborator.com", "oastify.com", "dnslog.cn",
	"dnslog.link", "ceye.io", "canarytokens.com",
	// Names that resolve to any address written in them.
	"nip.io", "sslip.io", "xip.io",
}

// publicSuffix is name's public suffix: the PSL's (golang.org/x/net), or
// a longer one from sharedZones.
func publicSuffix(name string) string {
	best := pslSuffix(name)
	for _, z := range sharedZones {
		wild := strings.HasPrefix(z, "*.")
		z = strings.TrimPrefix(z, "*.")
		if name != z && !strings.HasSuffix(name, "."+z) {
			continue
		}
		s := z
		if wild {
			if name == z {
				continue
			}
			rest := strings.TrimSuffix(name, "."+z)
			s = rest[strings.LastIndexByte(rest, '.')+1:] + "." + z
		}
		if len(s) > len(best) {
			best = s
		}
	}
	return best
}

// sharedZoneTails are the sharedZones strictly below f, relative to f, as
// pslTails lists them.
func sharedZoneTails(f string) []string {
	var out []string
	for _, z := range sharedZones {
		wild := strings.HasPrefix(z, "*.")
		bare := strings.TrimPrefix(z, "*.")
		if !strings.HasSuffix(bare, "."+f) {
			continue
		}
		rel := strings.TrimSuffix(bare, "."+f)
		if wild {
			rel = "*." + rel
		}
		out = append(out, rel)
	}
	return out
}
