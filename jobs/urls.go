package jobs

import (
	"encoding/base64"
	"fmt"
	"net/netip"
	"net/url"
	"regexp"
	"strings"
)

// Input files reach fal as URLs that fal fetches (this server never does),
// so a URL a user sends must not point fal, or whatever fetches for it,
// into a private network: https only, a host, no user name or password,
// and no IP literal of a private, loopback, link-local, unique-local,
// unspecified or otherwise non-public address (IPv4, IPv6 and IPv4-mapped
// IPv6 alike), nor a number that resolvers read as one (2130706433,
// 0x7f.1, 127.1). Host names are not resolved: what a name resolves to is
// decided when fal fetches it.

// Bounds of input file references.
const (
	maxURLBytes = 8 << 10
	// MaxDataURIBytes bounds one data: URI; the whole request body is at
	// most 1 MB anyway, so large images go by URL.
	MaxDataURIBytes = 1 << 20
)

// nonPublic are the IP ranges, beyond those netip classifies (loopback,
// private and unique-local, link-local, multicast, unspecified), that no
// input file may come from.
var nonPublic = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),     // "this network"
	netip.MustParsePrefix("100.64.0.0/10"), // shared address space (carrier-grade NAT)
	netip.MustParsePrefix("192.0.0.0/24"),  // IETF protocol assignments
	netip.MustParsePrefix("198.18.0.0/15"), // benchmarking
	netip.MustParsePrefix("240.0.0.0/4"),   // reserved, and the broadcast address
	netip.MustParsePrefix("fec0::/10"),     // site-local (deprecated)
}

// localSuffixes are host names that only mean something inside a network.
var localSuffixes = []string{".localhost", ".local", ".internal", ".home.arpa"}

// numericLabel matches a host label resolvers may read as a number: URL
// parsers and inet_aton take a host ending in one as an IPv4 address in
// another notation.
var numericLabel = regexp.MustCompile(`^(0x[0-9a-f]*|[0-9]+)$`)

// dataImage matches the head of a data:image/... URI with base64 data.
var dataImage = regexp.MustCompile(`^data:image/[a-z0-9][a-z0-9.+-]*(;[a-z0-9-]+=[^;,]*)*;base64,`)

// checkInputURL says what is wrong with v as an input file for fal, or ""
// when nothing is: an https URL of a public host, or, when dataURI, a
// data:image/... URI with base64 data.
func checkInputURL(v any, dataURI bool) string {
	want := "must be an https URL"
	if dataURI {
		want += " or a data:image/... URI"
	}
	s, ok := v.(string)
	if !ok {
		return want
	}
	if strings.HasPrefix(strings.ToLower(s), "data:") {
		if !dataURI {
			return "must be an https URL (this field takes no data: URI)"
		}
		return checkDataURI(s)
	}
	if len(s) > maxURLBytes {
		return fmt.Sprintf("must be at most %d bytes long", maxURLBytes)
	}
	u, err := url.Parse(s)
	if err != nil || u.Scheme != "https" || u.Opaque != "" {
		return want
	}
	if u.User != nil {
		return "must not carry a user name or password"
	}
	return CheckPublicHost(u.Hostname())
}

// CheckPublicHost says what is wrong with host as the host of a URL that
// must lead out of the network (an input file, a webhook endpoint), or ""
// when nothing is: an IP literal of a non-public address (NonPublicKind),
// a number resolvers read as an address, a local name or a name without a
// domain. Names are not resolved.
func CheckPublicHost(host string) string {
	if host == "" {
		return "must be an https URL with a host"
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		if kind := NonPublicKind(ip.Unmap()); kind != "" {
			return fmt.Sprintf("must name a public host: %s is %s address", host, kind)
		}
		return ""
	}
	name := strings.TrimSuffix(strings.ToLower(host), ".")
	labels := strings.Split(name, ".")
	switch {
	case numericLabel.MatchString(labels[len(labels)-1]):
		return fmt.Sprintf("must name a public host: %s is not a valid IP address", host)
	case name == "localhost" || hasAnySuffix(name, localSuffixes):
		return fmt.Sprintf("must name a public host: %s is a local name", host)
	case len(labels) < 2:
		return fmt.Sprintf("must name a public host: %s has no domain", host)
	}
	return ""
}

// NonPublicKind names the kind of a non-public address ("a private"), or
// returns "" for a public one. ip must be unmapped (netip.Addr.Unmap).
func NonPublicKind(ip netip.Addr) string {
	switch {
	case ip.IsUnspecified():
		return "an unspecified"
	case ip.IsLoopback():
		return "a loopback"
	case ip.IsPrivate():
		return "a private"
	case ip.IsLinkLocalUnicast(), ip.IsLinkLocalMulticast():
		return "a link-local"
	case ip.IsMulticast(), ip.IsInterfaceLocalMulticast():
		return "a multicast"
	}
	for _, p := range nonPublic {
		if p.Contains(ip) {
			return "a reserved"
		}
	}
	return ""
}

// checkDataURI says what is wrong with s as a data:image/... URI.
func checkDataURI(s string) string {
	if len(s) > MaxDataURIBytes {
		return fmt.Sprintf("data: URI must be at most %d bytes; send large images by URL", MaxDataURIBytes)
	}
	head := dataImage.FindString(strings.ToLower(s[:min(len(s), 256)]))
	if head == "" {
		return "must be a data:image/<type>;base64,... URI"
	}
	data := s[len(head):]
	if _, err := base64.StdEncoding.DecodeString(data); err != nil {
		if _, err := base64.RawStdEncoding.DecodeString(data); err != nil {
			return "data: URI must hold valid base64 data"
		}
	}
	return ""
}

func hasAnySuffix(s string, suffixes []string) bool {
	for _, suf := range suffixes {
		if strings.HasSuffix(s, suf) {
			return true
		}
	}
	return false
}
