package api

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
)

// CORS headers the API grants to an allowed origin.
const (
	corsAllowMethods  = "GET, POST, OPTIONS"
	corsAllowHeaders  = "Authorization, Content-Type, Idempotency-Key, Last-Event-ID, X-Request-Id"
	corsExposeHeaders = "Retry-After, Location, Idempotent-Replayed, X-Request-Id"
	corsMaxAge        = "600"
)

// ParseCORSOrigins parses CORS_ALLOWED_ORIGINS: comma-separated exact
// browser origins, each scheme://host[:port] (http or https, no path, no
// query). It returns every problem at once. A default port (:443 for
// https, :80 for http) is dropped and scheme and host are lowercased, as
// browsers send them in the Origin header.
//
// "*" is refused: the API spends the user's credits, and a wildcard would
// let the scripts of every website call it and read its answers with a
// token they got hold of. Bearer tokens are not sent by the browser on its
// own (there is no cookie to ride on), so the list is not about CSRF; it
// keeps the set of pages that can drive the API from a browser explicit.
func ParseCORSOrigins(v string) ([]string, error) {
	var origins []string
	var errs []error
	for raw := range strings.SplitSeq(v, ",") {
		raw = strings.TrimSpace(raw)
		if raw == "" {
			continue
		}
		origin, err := parseOrigin(raw)
		if err != nil {
			errs = append(errs, fmt.Errorf("CORS_ALLOWED_ORIGINS: %q %w", raw, err))
			continue
		}
		origins = append(origins, origin)
	}
	return origins, errors.Join(errs...)
}

func parseOrigin(raw string) (string, error) {
	if raw == "*" {
		return "", errors.New("is refused: list the exact origins of the studio's pages (a wildcard would let any website's scripts use a token against this paid API)")
	}
	u, err := url.Parse(raw)
	if err != nil || u.Opaque != "" {
		return "", errors.New("is not an origin (scheme://host[:port])")
	}
	scheme := strings.ToLower(u.Scheme)
	switch {
	case scheme != "http" && scheme != "https":
		return "", errors.New("is not an http or https origin (scheme://host[:port])")
	case u.Host == "" || u.Hostname() == "":
		return "", errors.New("has no host (scheme://host[:port])")
	case u.User != nil:
		return "", errors.New("carries a user name, which an origin never has")
	case u.Path != "" || u.RawQuery != "" || u.ForceQuery || u.Fragment != "":
		return "", errors.New("has a path, query or fragment: an origin is scheme://host[:port] only (no trailing slash)")
	case strings.Contains(u.Host, "*"):
		return "", errors.New("has a wildcard: list each origin")
	}
	host := strings.ToLower(u.Host)
	if port := u.Port(); (scheme == "https" && port == "443") || (scheme == "http" && port == "80") {
		host = strings.TrimSuffix(host, ":"+port)
	}
	return scheme + "://" + host, nil
}

// CORS lets the browser pages of the given origins call the API (/v1/)
// from another origin. With no origins it returns next as it is: no CORS
// header at all, so browsers allow only same-origin calls.
//
// For an allowed Origin, a preflight (OPTIONS with
// Access-Control-Request-Method) is answered 204 with the methods, request
// headers and max age granted, and actual requests get
// Access-Control-Allow-Origin and the response headers a client reads
// (Retry-After, Location, Idempotent-Replayed, X-Request-Id). Credentials
// (cookies) are never allowed: the API takes bearer tokens. A preflight
// from any other origin is answered 403 with a problem detail naming the
// origin (the browser then refuses the call; the status shows in its
// network panel); an actual request from one is served without any grant,
// so the browser keeps its answer from the page. Every /v1/ response says
// Vary: Origin, so caches keep answers to different origins apart.
func CORS(origins []string, next http.Handler) http.Handler {
	if len(origins) == 0 {
		return next
	}
	allowed := make(map[string]bool, len(origins))
	for _, o := range origins {
		allowed[o] = true
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasPrefix(r.URL.Path, "/v1/") {
			next.ServeHTTP(w, r)
			return
		}
		h := w.Header()
		h.Add("Vary", "Origin")
		origin := r.Header.Get("Origin")
		if origin == "" {
			next.ServeHTTP(w, r)
			return
		}
		preflight := r.Method == http.MethodOptions && r.Header.Get("Access-Control-Request-Method") != ""
		switch {
		case preflight && allowed[origin]:
			h.Set("Access-Control-Allow-Origin", origin)
			h.Set("Access-Control-Allow-Methods", corsAllowMethods)
			h.Set("Access-Control-Allow-Headers", corsAllowHeaders)
			h.Set("Access-Control-Max-Age", corsMaxAge)
			w.WriteHeader(http.StatusNoContent)
		case preflight:
			body, _ := json.Marshal(newProblem(http.StatusForbidden,
				"origin "+origin+" is not allowed to call this API from a browser (CORS_ALLOWED_ORIGINS)"))
			h.Set("Content-Type", "application/problem+json")
			w.WriteHeader(http.StatusForbidden)
			_, _ = w.Write(body)
		default:
			if allowed[origin] {
				h.Set("Access-Control-Allow-Origin", origin)
				h.Set("Access-Control-Expose-Headers", corsExposeHeaders)
			}
			next.ServeHTTP(w, r)
		}
	})
}
