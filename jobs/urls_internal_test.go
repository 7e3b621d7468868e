package jobs

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestCheckInputURL(t *testing.T) {
	t.Parallel()

	t.Run("Accepts", func(t *testing.T) {
		t.Parallel()
		for _, u := range []string{
			"https://cdn.example.com/ring.jpg",
			"https://cdn.example.com:8443/a/b.png?sig=abc#x",
			"HTTPS://CDN.EXAMPLE.COM/A.PNG",
			"https://x.test/a.png",
			"https://8.8.8.8/a.png",
			"https://[2606:4700::1111]/a.png",
			"https://example.com./a.png",
			"https://abc-123.supabase.co/storage/v1/object/public/a.png",
		} {
			require.Empty(t, checkInputURL(u, false), u)
		}
		for _, u := range []string{"data:image/png;base64,iVBORw0KGgo=", "data:image/jpeg;base64,/9j/4AAQ", "DATA:IMAGE/WEBP;BASE64,UklGRg=="} {
			require.Empty(t, checkInputURL(u, true), u)
		}
	})

	t.Run("Refuses", func(t *testing.T) {
		t.Parallel()
		for _, tc := range []struct {
			url, msg string
		}{
			// Schemes and shapes.
			{"http://cdn.example.com/a.png", "must be an https URL"},
			{"file:///etc/passwd", "must be an https URL"},
			{"ftp://cdn.example.com/a.png", "must be an https URL"},
			{"gopher://cdn.example.com/", "must be an https URL"},
			{"//cdn.example.com/a.png", "must be an https URL"},
			{"https:cdn.example.com/a.png", "must be an https URL"},
			{"https:///a.png", "must be an https URL with a host"},
			{"https://", "must be an https URL with a host"},
			{"https://exa mple.com/", "must be an https URL"},
			{"https://user:pass@cdn.example.com/a.png", "must not carry a user name or password"},
			{"https://user@cdn.example.com/a.png", "must not carry a user name or password"},
			{"https://cdn.example.com/" + strings.Repeat("a", 9000), "must be at most 8192 bytes long"},
			// IPv4 literals.
			{"https://127.0.0.1/a.png", "127.0.0.1 is a loopback address"},
			{"https://127.9.9.9/", "is a loopback address"},
			{"https://10.0.0.1/", "10.0.0.1 is a private address"},
			{"https://172.16.5.4/", "is a private address"},
			{"https://192.168.1.1/", "is a private address"},
			{"https://169.254.169.254/latest/meta-data/", "169.254.169.254 is a link-local address"},
			{"https://0.0.0.0/", "0.0.0.0 is an unspecified address"},
			{"https://0.1.2.3/", "is a reserved address"},
			{"https://100.64.0.1/", "is a reserved address"},
			{"https://255.255.255.255/", "is a reserved address"},
			{"https://239.1.2.3/", "is a multicast address"},
			{"https://224.0.0.1/", "is a link-local address"},
			// Other notations of IPv4 addresses, which resolvers accept.
			{"https://2130706433/", "2130706433 is not a valid IP address"},
			{"https://0x7f000001/", "is not a valid IP address"},
			{"https://0x7f.1/", "is not a valid IP address"},
			{"https://127.1/", "is not a valid IP address"},
			{"https://017700000001/", "is not a valid IP address"},
			{"https://010.0.0.1/", "is not a valid IP address"},
			// IPv6 literals, IPv4-mapped ones included.
			{"https://[::1]/a.png", "::1 is a loopback address"},
			{"https://[::]/", ":: is an unspecified address"},
			{"https://[fe80::1]/", "is a link-local address"},
			{"https://[fe80::1%25eth0]/", "is a link-local address"},
			{"https://[fc00::1]/", "is a private address"},
			{"https://[fd12:3456::1]/", "is a private address"},
			{"https://[fec0::1]/", "is a reserved address"},
			{"https://[ff0e::1]/", "is a multicast address"},
			{"https://[::ffff:127.0.0.1]/", "::ffff:127.0.0.1 is a loopback address"},
			{"https://[::ffff:169.254.169.254]/", "is a link-local address"},
			{"https://[::ffff:a00:1]/", "is a private address"},
			// Names that only mean something inside a network.
			{"https://localhost/a.png", "localhost is a local name"},
			{"https://LOCALHOST./", "is a local name"},
			{"https://api.localhost/", "is a local name"},
			{"https://printer.local/", "is a local name"},
			{"https://metadata.google.internal/computeMetadata/v1/", "is a local name"},
			{"https://nas.home.arpa/", "is a local name"},
			{"https://intranet/a.png", "intranet has no domain"},
		} {
			msg := checkInputURL(tc.url, true)
			require.Contains(t, msg, tc.msg, tc.url)
		}
	})

	t.Run("DataURIs", func(t *testing.T) {
		t.Parallel()
		for _, tc := range []struct {
			uri, msg string
		}{
			{"data:image/png;base64,iVBORw0KGgo=", ""},
			{"data:image/svg+xml;base64,PHN2Zz4=", ""},
			{"data:image/png;name=a.png;base64,iVBORw0KGgo=", ""},
			{"data:text/html;base64,PGgxPg==", "must be a data:image/<type>;base64,... URI"},
			{"data:image/png,rawbytes", "must be a data:image/<type>;base64,... URI"},
			{"data:,hello", "must be a data:image/<type>;base64,... URI"},
			{"data:image/png;base64,not base64!", "must hold valid base64 data"},
			{"data:image/png;base64," + strings.Repeat("A", 1<<20), "must be at most 1048576 bytes"},
		} {
			require.Equal(t, tc.msg == "", checkInputURL(tc.uri, true) == "", tc.uri)
			require.Contains(t, checkInputURL(tc.uri, true), tc.msg, tc.uri)
		}
		require.Equal(t, "must be an https URL (this field takes no data: URI)", checkInputURL("data:image/png;base64,iVBORw0KGgo=", false))
	})

	t.Run("NotAString", func(t *testing.T) {
		t.Parallel()
		require.Equal(t, "must be an https URL or a data:image/... URI", checkInputURL(7, true))
		require.Equal(t, "must be an https URL", checkInputURL(nil, false))
	})
}
