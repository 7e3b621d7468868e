package webhooks

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"syscall"
	"time"

	"github.com/aiqueue/aiqueue/jobs"
)

// ErrPrivateAddress is the error of a delivery whose endpoint's name
// resolved to an address that is not public, with WEBHOOK_ALLOW_PRIVATE
// off.
var ErrPrivateAddress = errors.New("refused to connect to a non-public address (WEBHOOK_ALLOW_PRIVATE is off)")

// newHTTPClient is the client deliveries are made with: no proxy (it
// would be the one dialled, not the endpoint), redirects not followed (a
// 3xx is a failed attempt), timeout bounding the whole call, and unless
// allowPrivate every connection refused at dial time whose address, as
// resolved, is not public. Checking the address the socket is about to
// connect to, after resolution, is what keeps a name that resolves
// differently later (DNS rebinding) from reaching inside the network.
func newHTTPClient(timeout time.Duration, allowPrivate bool) *http.Client {
	dialer := &net.Dialer{Timeout: min(timeout, 5*time.Second)}
	if !allowPrivate {
		dialer.Control = refusePrivate
	}
	return &http.Client{
		Timeout: timeout,
		Transport: &http.Transport{
			Proxy:                 nil,
			DialContext:           dialer.DialContext,
			ForceAttemptHTTP2:     true,
			TLSHandshakeTimeout:   min(timeout, 5*time.Second),
			ResponseHeaderTimeout: timeout,
			MaxIdleConns:          64,
			MaxIdleConnsPerHost:   4,
			IdleConnTimeout:       90 * time.Second,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// refusePrivate is a net.Dialer Control function: it runs for every
// address a connection is attempted to, after the name was resolved.
func refusePrivate(_, address string, _ syscall.RawConn) error {
	host, _, err := net.SplitHostPort(address)
	if err != nil {
		return err
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return fmt.Errorf("%w: %s", ErrPrivateAddress, host)
	}
	if kind := jobs.NonPublicKind(ip.Unmap()); kind != "" {
		return fmt.Errorf("%w: %s is %s address", ErrPrivateAddress, ip.Unmap(), kind)
	}
	return nil
}

// callError is what is recorded and logged of a failed call: the error
// without the URL net/http wraps around it (an endpoint's URL may carry a
// token of the receiver's).
func callError(err error) string {
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	msg := err.Error()
	if len(msg) > 500 {
		msg = msg[:500]
	}
	return msg
}
