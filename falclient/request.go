package falclient

import (
	"fmt"
	"net/url"
	"strings"
)

// Request identifies a submitted fal request. It is what a caller stores
// (for example in a job's output) before waiting, and what Status,
// WatchStatus, Result and Cancel take. It marshals to JSON as
//
//	{"request_id": "...", "key": 2, "model": "fal-ai/flux/dev",
//	 "status_url": "...", "response_url": "...", "cancel_url": "..."}
//
// A value stored without the URLs (before they were kept) still works: the
// client then builds them from Model and ID the way fal's own JS client does.
type Request struct {
	// ID is fal's request_id.
	ID string `json:"request_id"`
	// Key is the 1-based index of the key the request was submitted with.
	Key int `json:"key"`
	// Model is the model id the request was submitted to.
	Model string `json:"model"`
	// StatusURL, ResponseURL and CancelURL are the URLs fal returned at
	// submit. The client uses them only when they are on Config.BaseURL's
	// scheme and host (a key is never sent anywhere else); Submit leaves
	// out any that is not.
	StatusURL   string `json:"status_url,omitempty"`
	ResponseURL string `json:"response_url,omitempty"`
	CancelURL   string `json:"cancel_url,omitempty"`
	// QueuePosition is the position fal reported at submit. It is stale a
	// moment later, so it is not stored.
	QueuePosition int `json:"-"`
}

// appNamespaces are the model id prefixes whose apps have three segments
// ("workflows/owner/app"), as in @fal-ai/client's parseEndpointId.
var appNamespaces = []string{"workflows", "comfy"}

// ownerApp returns the part of a model id that fal's status, result and
// cancel URLs use: "{owner}/{app}", or "{namespace}/{owner}/{app}" for ids
// starting with "workflows/" or "comfy/".
//
//	fal-ai/kling-video/v2.1/standard/image-to-video -> fal-ai/kling-video
//	workflows/acme/ring-shots/v2                    -> workflows/acme/ring-shots
func ownerApp(model string) (string, error) {
	segs := strings.Split(model, "/")
	for _, s := range segs {
		if s == "" || s == "." || s == ".." || strings.ContainsAny(s, "?#%\\ \t\r\n") {
			return "", fmt.Errorf("model id %q is not a valid path", model)
		}
	}
	n := 2
	for _, ns := range appNamespaces {
		if segs[0] == ns {
			n = 3
		}
	}
	if len(segs) < n {
		return "", fmt.Errorf("model id %q has no owner/app", model)
	}
	return strings.Join(segs[:n], "/"), nil
}

// ModelApp returns the part of a model id that fal's status, result and
// cancel URLs use: "{owner}/{app}", or three segments for ids starting with
// "workflows/" or "comfy/"; "" when the id has too few segments.
func ModelApp(model string) string {
	app, err := ownerApp(model)
	if err != nil {
		return ""
	}
	return app
}

// builtURL is {BaseURL}/{app}/requests/{id}{suffix}, the URL @fal-ai/client
// builds from the model id.
func (c *Client) builtURL(req Request, suffix string) (string, error) {
	if req.ID == "" {
		return "", fmt.Errorf("empty request id")
	}
	app, err := ownerApp(req.Model)
	if err != nil {
		return "", err
	}
	return c.base + "/" + app + "/requests/" + url.PathEscape(req.ID) + suffix, nil
}

// onBase reports whether raw is an absolute URL on the base URL's scheme
// and host, under its path, without credentials or fragment: the only URLs
// the client sends a key to.
func (c *Client) onBase(raw string) bool {
	u, err := url.Parse(raw)
	if err != nil || u.User != nil || u.Fragment != "" || u.Opaque != "" {
		return false
	}
	return strings.EqualFold(u.Scheme, c.baseURL.Scheme) &&
		strings.EqualFold(u.Host, c.baseURL.Host) &&
		strings.HasPrefix(u.Path, strings.TrimRight(c.baseURL.Path, "/")+"/")
}

// requestURL returns the URL of op for req: the URL fal returned when it is
// on the base URL, else the one built from the model id. stream is the
// status URL with "/stream" appended.
func (c *Client) requestURL(op string, key int, req Request) (string, error) {
	var returned, suffix string
	switch op {
	case opStatus:
		returned, suffix = req.StatusURL, "/status"
	case opStream:
		returned, suffix = req.StatusURL, "/status"
	case opResult:
		returned, suffix = req.ResponseURL, ""
	case opCancel:
		returned, suffix = req.CancelURL, "/cancel"
	}
	u := returned
	if u == "" || !c.onBase(u) {
		if u != "" {
			c.log.Warn("fal request URL is not on FAL_QUEUE_URL's host; using the URL built from the model id",
				"key", c.KeyName(key), "op", op, "request_id", req.ID, "host", hostOf(u))
		}
		var err error
		if u, err = c.builtURL(req, suffix); err != nil {
			return "", &Error{Kind: KindPermanent, Op: op, Key: key, Message: err.Error()}
		}
	}
	if op == opStream {
		p, err := url.Parse(u)
		if err != nil {
			return "", &Error{Kind: KindPermanent, Op: op, Key: key, Message: "bad status URL"}
		}
		u = p.JoinPath("stream").String()
	}
	return u, nil
}

// keepOnBase returns raw when the client would use it, else "".
func (c *Client) keepOnBase(raw string) string {
	if raw != "" && c.onBase(raw) {
		return raw
	}
	return ""
}

// hostOf returns the host of a URL for a log line, or "?" when it has none.
func hostOf(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return "?"
	}
	return u.Host
}
